"""The toolkit tree of the C ABI tests (``npufarm sdk --prefix``), built once per session, and
the samples' build and run recipe.

A test module wraps :func:`session_tree` in a fixture of its own; the first module to ask builds
the tree (a few seconds) and the others reuse it. The programs of ``tests/c`` are built with gcc
directly (:func:`build_c_program`, :func:`build_python_extension`); a program that waits for the
test between its phases is started with :func:`start_sourced` and read with :func:`read_until`.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.conftest import REPO

EXAMPLES = REPO / "examples" / "c"
_BUILT: dict[str, Path] = {}


def build_sdk(root: Path, *args: str, env: dict[str, str] | None = None):
    """``python -m npufarm sdk --prefix ROOT ARGS...`` (the completed process)."""
    return subprocess.run(
        [sys.executable, "-m", "npufarm", "sdk", "--prefix", str(root), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def session_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of the toolkit tree of this test session (built by the first caller)."""
    if "root" not in _BUILT:
        root = tmp_path_factory.mktemp("cabi") / "toolkit"
        done = build_sdk(root)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == str(root)
        _BUILT["root"] = root
    return _BUILT["root"]


def sample_env(root: Path) -> dict[str, str]:
    """The environment the samples' recipe builds in: DDK_PATH and NPU_HOST_LIB."""
    return {
        **os.environ,
        "DDK_PATH": str(root),
        "NPU_HOST_LIB": str(root / "runtime" / "lib64" / "stub"),
    }


def build_sample(root: Path, name: str, build_dir: Path) -> Path:
    """The Ascend samples' recipe, unchanged: ``cmake <sample>/src -DCMAKE_CXX_COMPILER=g++
    -DCMAKE_SKIP_RPATH=TRUE; make``; returns the built ``main``."""
    build_dir.mkdir(parents=True, exist_ok=True)
    for cmd in (
        [
            "cmake",
            str(EXAMPLES / name / "src"),
            "-DCMAKE_CXX_COMPILER=g++",
            "-DCMAKE_SKIP_RPATH=TRUE",
        ],
        ["make"],
    ):
        done = subprocess.run(
            cmd, cwd=build_dir, env=sample_env(root), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return build_dir / "main"


@dataclass
class SourcedRun:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def run_sourced(
    root: Path, argv: list, env: dict[str, str], cwd: Path, timeout_s: float = 60.0
) -> SourcedRun:
    """Run ``argv`` in bash after ``source <root>/set_env.sh`` (``exec``: the program keeps the
    pid returned)."""
    script = 'source "$1/set_env.sh" && shift && exec "$@"'
    with subprocess.Popen(
        ["bash", "-c", script, "bash", str(root), *map(str, argv)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"{argv} did not end in {timeout_s}s:\n{out}\n{err}") from None
    return SourcedRun(process.pid, process.returncode, out, err)


def exported(library: Path) -> set[str]:
    """Function names a shared library defines (``nm -D --defined-only``, text symbols)."""
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[2] for line in out.splitlines() if line.split()[1] == "T"}


def dynamic_section(library: Path) -> dict[str, list[str]]:
    """readelf -d as tag -> values, e.g. {"NEEDED": ["libc.so.6"], "SONAME": [...]}."""
    out = subprocess.run(
        ["readelf", "-d", str(library)], capture_output=True, text=True, check=True
    ).stdout
    tags: dict[str, list[str]] = {}
    for line in out.splitlines():
        if "(" in line and "[" in line:
            tag = line.split("(", 1)[1].split(")", 1)[0]
            tags.setdefault(tag, []).append(line.rsplit("[", 1)[1].rstrip("]"))
    return tags


# -- C programs built with gcc against the tree (tests/c) ------------------------------------

TESTS_C = REPO / "tests" / "c"


def _compile(cmd: list, what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{what}: {' '.join(map(str, cmd))}:\n{done.stdout}{done.stderr}"


def build_c_program(root: Path, source: Path, out: Path) -> Path:
    """``gcc -std=gnu99 -Wall -Werror`` of one C source against the tree's headers, linked as
    the samples link (``-lascendcl`` from ``runtime/lib64/stub``, no run path); ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["gcc", "-std=gnu99", "-Wall", "-Werror", "-O1"]
    cmd += ["-I", root / "runtime" / "include", "-I", TESTS_C, "-o", out, source]
    cmd += ["-L", root / "runtime" / "lib64" / "stub", "-lascendcl", "-lpthread", "-lm"]
    _compile(cmd, source.name)
    return out


def build_python_extension(root: Path, source: Path, name: str, out_dir: Path) -> Path:
    """A plain-C Python extension module: ``gcc -shared -fPIC`` with this interpreter's
    headers, linked ``-lascendcl`` from the tree's ``runtime/lib64``; the built module file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    cmd = ["gcc", "-shared", "-fPIC", "-std=gnu99", "-Wall", "-Werror", "-O1"]
    cmd += ["-I", sysconfig.get_paths()["include"], "-I", root / "runtime" / "include"]
    cmd += ["-o", out, source, "-L", root / "runtime" / "lib64", "-lascendcl"]
    _compile(cmd, source.name)
    return out


def start_sourced(root: Path, argv: list, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """As :func:`run_sourced`, but started and left running with stdin, stdout and stderr as
    text pipes (a program that waits for the test between its phases)."""
    script = 'source "$1/set_env.sh" && shift && exec "$@"'
    return subprocess.Popen(
        ["bash", "-c", script, "bash", str(root), *map(str, argv)],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(process: subprocess.Popen, marker: str, timeout_s: float = 30.0) -> list[str]:
    """stdout lines of ``process`` up to and including the line ``marker`` (AssertionError,
    with what came, if it ends or ``timeout_s`` passes first). Reads the pipe's descriptor a
    byte at a time, so nothing after the marker is taken from a later ``communicate()``."""
    lines: list[str] = []
    line = b""
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    while (remaining_s := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], remaining_s)[0]:
            break
        byte = os.read(fd, 1)
        if not byte:
            break
        if byte != b"\n":
            line += byte
            continue
        lines.append(line.decode(errors="replace"))
        line = b""
        if lines[-1] == marker:
            return lines
    raise AssertionError(f"no {marker!r} line from {process.args}; got {lines}")


def arrows(stdout: str) -> dict[str, str]:
    """The ``name -> value`` lines of a program's output, in order."""
    return dict(line.split(" -> ", 1) for line in stdout.splitlines() if " -> " in line)
