"""The CANN-style toolkit tree ``npufarm sdk`` prints: where it is, whether it is current, and
building it.

Layout (``<root>`` plays CANN's ``ascend-toolkit/latest``)::

    runtime/include/acl/...            our headers (cabi/include)
    runtime/lib64/libascendcl.so       the real libraries (cabi.build_libs)
    runtime/lib64/libacl_dvpp.so, libacl_cblas.so
    runtime/lib64/stub/lib*.so         link-time stubs
    set_env.sh                         what CANN's exports, for this tree
    bin/atc                            this venv's ``npufarm atc``
    acllib -> runtime, include -> runtime/include, lib64 -> runtime/lib64
                                       the older samples' paths and the toolkit-level ones
    <arch>-linux/ascend_toolkit_install.info, include, lib64
    opp/                               empty (ASCEND_OPP_PATH names it)
    .npufarm-sdk.json                  the stamp: input hash, written last

Without ``--prefix`` the tree lives in ``$XDG_CACHE_HOME/npufarm/sdk/<hash>`` (else
``~/.cache/...``) with a ``latest`` link beside it, as CANN's ``ascend-toolkit/latest``. The hash
covers what the libraries are made of (headers, the cabi sources, this interpreter's path and
version, cffi's version), so an unchanged tree is reused at once and a changed input builds a
new one. Builds take a file lock and go to a temporary sibling that replaces the tree only when
complete, so concurrent callers never see half a tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import cffi

from cabi import bridge, build_c, build_libs, symbols
from cabi.bridge.registry import kind_of

__all__ = [
    "SDK_FORMAT",
    "STAMP",
    "build_tree",
    "default_base",
    "input_hash",
    "is_current",
    "locate",
    "sdk_tree",
]

logger = logging.getLogger(__name__)

SDK_FORMAT = 1  # bump when the layout changes without any hashed input changing
STAMP = ".npufarm-sdk.json"
CABI_DIR = Path(__file__).resolve().parent
HEADERS_DIR = CABI_DIR / "include"


def hashed_files(cabi_dir: Path = CABI_DIR) -> list[Path]:
    """The files the tree is made of: every header and Python source of the cabi package."""
    found = [
        p
        for p in cabi_dir.rglob("*")
        if p.is_file() and p.suffix in (".h", ".py") and "__pycache__" not in p.parts
    ]
    return sorted(found, key=lambda p: p.relative_to(cabi_dir).as_posix())


def input_hash(cabi_dir: Path = CABI_DIR, python: str | None = None) -> str:
    """16 hex digits over the hashed files (path and bytes), the interpreter the library
    embeds (path, version, LIBDIR), cffi's version and :data:`SDK_FORMAT`."""
    digest = hashlib.sha256()
    facts = {
        "format": SDK_FORMAT,
        "python": python or build_libs.venv_python(),
        "version": sys.version,
        "libdir": sysconfig.get_config_var("LIBDIR"),
        "cffi": cffi.__version__,
    }
    digest.update(json.dumps(facts, sort_keys=True).encode())
    for path in hashed_files(cabi_dir):
        digest.update(path.relative_to(cabi_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def default_base() -> Path:
    """``$XDG_CACHE_HOME/npufarm/sdk`` (``~/.cache/npufarm/sdk`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "npufarm" / "sdk"


def locate(prefix: str | os.PathLike | None, digest: str) -> Path:
    """The tree's root: exactly ``prefix``, else the per-user location for ``digest``."""
    if prefix is not None:
        return Path(prefix).expanduser().absolute()
    return default_base() / digest


def read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None


def is_current(root: Path, digest: str) -> bool:
    """True when ``root`` holds a complete tree built from inputs hashing to ``digest``."""
    stamp = read_stamp(root)
    return (
        isinstance(stamp, dict)
        and stamp.get("hash") == digest
        and (root / "runtime" / "lib64" / "libascendcl.so").is_file()
    )


def sdk_tree(
    prefix: str | os.PathLike | None = None,
    rebuild: bool = False,
    announce: Callable[[Path], None] | None = None,
) -> Path:
    """The root of a current tree (building it first when needed, or when ``rebuild``);
    ``announce(root)`` is called before a build starts."""
    digest = input_hash()
    root = locate(prefix, digest)
    if rebuild or not is_current(root, digest):
        with _locked(root):
            if rebuild or not is_current(root, digest):  # another process may have built it
                if announce is not None:
                    announce(root)
                build_tree(root, digest)
    if prefix is None:
        _point_latest(root)
    return root


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _point_latest(root: Path) -> None:
    """``<base>/latest -> <hash>``, replaced atomically."""
    latest = root.parent / "latest"
    if latest.is_symlink() and os.readlink(latest) == root.name:
        return
    temp = root.parent / f".latest-{os.getpid()}"
    temp.unlink(missing_ok=True)
    temp.symlink_to(root.name)
    os.replace(temp, latest)


def build_tree(root: Path, digest: str) -> Path:
    """Build the whole tree for ``root`` in a temporary sibling, then swap it in.

    An existing ``root`` is replaced only if it is a tree of ours (it has the stamp) or an
    empty directory: ``--prefix`` pointing at someone's directory is refused."""
    if root.exists() and read_stamp(root) is None and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not an npufarm toolkit tree (no {STAMP})")
    started = time.monotonic()
    temp = root.parent / f".{root.name}.build-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        exported = _build_into(temp, root)
        _write_stamp(temp, digest, exported, time.monotonic() - started)
        _swap(temp, root)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    logger.info("toolkit tree built in %s (%.1f s)", root, time.monotonic() - started)
    return root


def _build_into(temp: Path, root: Path) -> dict[str, int]:
    """Every file of the tree under ``temp``; texts name ``root``, where it will live."""
    runtime = temp / "runtime"
    shutil.copytree(HEADERS_DIR, runtime / "include")
    prototypes = symbols.prototypes()
    emulated = unusable_values(prototypes)
    work = temp / ".work"
    built = build_libs.compile_all(prototypes, emulated, runtime / "lib64", work)
    shutil.rmtree(work)
    _write_conveniences(temp, root)
    return {
        "functions": len(prototypes),
        "emulated": len(set(emulated) & {p.name for p in prototypes}),
        "libraries": len(built),
    }


def unusable_values(prototypes: list[symbols.Prototype]) -> dict[str, str]:
    """Every emulated call the headers declare -> the C value it returns without Python."""
    declared = {proto.name: proto for proto in prototypes}
    values = {}
    for name, function in sorted(bridge.EMULATED.items()):
        if name in declared:  # else library_sets says what is undeclared
            kind = kind_of(function)
            abi_ret = symbols.abi_type(declared[name].ret)
            values[name] = build_c.unusable_value(name, abi_ret, kind.name, kind.failure)
        else:
            values[name] = "0"
    return values


def _swap(temp: Path, root: Path) -> None:
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.is_dir() and not root.is_symlink():
        os.rename(root, old)
    os.rename(temp, root)
    shutil.rmtree(old, ignore_errors=True)


def _write_stamp(temp: Path, digest: str, exported: dict[str, int], took_s: float) -> None:
    stamp = {
        "hash": digest,
        "format": SDK_FORMAT,
        "python": build_libs.venv_python(),
        "build_s": round(took_s, 2),
        **exported,
    }
    (temp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")


def _write_conveniences(temp: Path, root: Path) -> None:
    """set_env.sh, bin/atc, the compatibility links, the install-info file, opp/."""
    (temp / "set_env.sh").write_text(set_env_text(root))
    atc = temp / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text(atc_text())
    atc.chmod(0o755)
    (temp / "opp").mkdir()
    for link, target in (("acllib", "runtime"), ("include", "runtime/include")):
        (temp / link).symlink_to(target)
    (temp / "lib64").symlink_to("runtime/lib64")
    arch = temp / f"{platform.machine()}-linux"
    arch.mkdir()
    (arch / "include").symlink_to("../runtime/include")
    (arch / "lib64").symlink_to("../runtime/lib64")
    (arch / "ascend_toolkit_install.info").write_text(install_info_text(root, arch.name))


_SET_ENV = """\
# npufarm's CANN-style toolkit tree: AscendCL emulated over an npufarm farm.
# Use as CANN's: `source @ROOT@/set_env.sh`, then build and run as usual.
# The libraries need nothing more from the environment: libascendcl.so embeds the Python it was
# built with (NPUFARM_PYTHON=/path/to/venv/bin/python overrides it) and finds the farm at
# aclInit as pyACL does: NPUFARM_ADDRESS, else a running farm's state file, else an embedded
# farm of its own for the life of the program.
export ASCEND_TOOLKIT_HOME=@ROOT@
export ASCEND_HOME_PATH="${ASCEND_TOOLKIT_HOME}"
export ASCEND_OPP_PATH="${ASCEND_TOOLKIT_HOME}/opp"
export ASCEND_AICPU_PATH="${ASCEND_TOOLKIT_HOME}"
export LD_LIBRARY_PATH="${ASCEND_TOOLKIT_HOME}/runtime/lib64${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
export PATH="${ASCEND_TOOLKIT_HOME}/bin${PATH:+:${PATH}}"
"""


def set_env_text(root: Path) -> str:
    """The sourced script: CANN's toolkit variables for this tree (POSIX sh, as CANN's)."""
    return _SET_ENV.replace("@ROOT@", shlex.quote(str(root)))


def atc_text() -> str:
    python = shlex.quote(build_libs.venv_python())
    return f"""\
#!/bin/sh
# CANN's model converter for this tree: npufarm's atc (ONNX -> .om the farm runs).
exec {python} -m npufarm atc "$@"
"""


def acl_version(headers: Path = HEADERS_DIR) -> str:
    """The AscendCL interface version our headers declare (``ACL_*_VERSION``), or "unknown"."""
    parts = {}
    for header in headers.rglob("*.h"):
        text = header.read_text(errors="replace")
        for key in ("MAJOR", "MINOR", "PATCH"):
            match = re.search(rf"#define\s+ACL_{key}_VERSION\s+(\d+)", text)
            if match:
                parts[key] = match.group(1)
    if len(parts) < 3:
        return "unknown"
    return f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"


def install_info_text(root: Path, arch_dir: str) -> str:
    """CANN's ``<arch>-linux/ascend_toolkit_install.info`` (people ``cat`` it for the version)."""
    try:
        ours = package_version("npufarm")
    except PackageNotFoundError:  # run from a source checkout that was never installed
        ours = "unknown"
    return (
        "package_name=Ascend-cann-toolkit\n"
        f"version=npufarm-{ours}\n"
        f"innerversion=AscendCL {acl_version()} emulated by npufarm\n"
        f"arch={platform.machine()}\n"
        "os=linux\n"
        f"path={root / arch_dir}\n"
    )
