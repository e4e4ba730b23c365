"""Compiling the toolkit tree's libraries: libascendcl.so (cffi embedding), the plain C ones.

* ``lib64/libascendcl.so``: cffi's embedding mode. Each emulated call is a C function
  (:func:`cabi.build_c.wrapper_source`) over a static ``extern "Python"`` function whose body
  :mod:`cabi.bridge` attaches at the first call; every other function of the ascendcl header
  set is a plain C body (:mod:`cabi.build_c`). Links libpython with a run path to this
  interpreter's LIBDIR, so no environment is needed to find it.
* ``lib64/libacl_dvpp.so``: plain C; the DVPP allocator forwards to libascendcl (found next to
  it through ``$ORIGIN``), everything else is unsupported. ``lib64/libacl_cblas.so``: all
  unsupported.
* ``lib64/stub/*.so``: every symbol, no Python, no dependency: what programs link against.

Every library's SONAME is its file name, so a program linked against a stub loads the real
library of the same name from ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cffi

from cabi import build_c, symbols

__all__ = ["LIBRARIES", "EMBEDDED_MODULE", "LibrarySet", "compile_all", "library_sets"]

logger = logging.getLogger(__name__)

LIBRARIES = ("ascendcl", "acl_dvpp", "acl_cblas")
EMBEDDED_MODULE = "_npufarm_ascendcl"  # the Python extension module libascendcl.so also is

_CFLAGS = ("-O1", "-fPIC", "-Wall")
_SCALARS = frozenset(
    ("void", "int", "float", "double", "size_t", "_Bool", "char")
    + tuple(f"{u}int{n}_t" for u in ("", "u") for n in (8, 16, 32, 64))
)  # ~700 one-line bodies: optimisation buys nothing here


@dataclass(frozen=True)
class LibrarySet:
    """One library's share of the headers: ``(name, abi return type)`` of every function,
    which of them its Python half emulates (libascendcl only), and the emulated calls of other
    libraries (see :func:`compile_ascendcl`)."""

    library: str
    functions: tuple[tuple[str, str], ...]
    emulated: tuple[str, ...] = ()
    elsewhere: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.functions]


def library_sets(
    prototypes: Iterable[symbols.Prototype], emulated: Iterable[str]
) -> dict[str, LibrarySet]:
    """Split the prototypes by library; ``emulated`` names must be ascendcl functions of the
    headers (a bridge entry the headers do not declare would be exported undeclared)."""
    by_library: dict[str, list[tuple[str, str]]] = {lib: [] for lib in LIBRARIES}
    declared: dict[str, str] = {}
    for proto in prototypes:
        if proto.library not in by_library:
            raise ValueError(f"{proto.name}: unknown library {proto.library!r}")
        by_library[proto.library].append((proto.name, symbols.abi_type(proto.ret)))
        declared[proto.name] = proto.library
    wanted = set(emulated) - build_c.C_IMPLEMENTED
    undeclared = sorted(n for n in wanted if n not in declared)
    if undeclared:
        raise ValueError(f"emulated calls the headers do not declare: {undeclared}")
    elsewhere = tuple(sorted(n for n in wanted if declared[n] != "ascendcl"))
    wanted -= set(elsewhere)
    for name, ret in (f for funcs in by_library.values() for f in funcs):
        if not (ret in _SCALARS or ret.endswith("*")):
            raise ValueError(f"{name} returns a {ret} by value, which no build_c body can do")
    return {
        lib: LibrarySet(
            lib,
            tuple(sorted(funcs)),
            tuple(sorted(wanted)) if lib == "ascendcl" else (),
            elsewhere if lib == "ascendcl" else (),
        )
        for lib, funcs in by_library.items()
    }


def _cc() -> str:
    return os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"


def compile_plain(
    source: str, out: Path, work: Path, link_args: Sequence[str] = (), libs: Sequence[str] = ()
) -> Path:
    """``cc -shared`` one C file into ``out`` (SONAME = its file name)."""
    work.mkdir(parents=True, exist_ok=True)
    c_file = work / f"{out.stem}.c"
    c_file.write_text(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        _cc(),
        *_CFLAGS,
        "-shared",
        "-o",
        str(out),
        str(c_file),
        f"-Wl,-soname,{out.name}",
        *link_args,
        *libs,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compiling {out.name} failed:\n{' '.join(cmd)}\n{done.stderr}")
    return out


def venv_python() -> str:
    """The interpreter the library embeds: this one (a venv's ``bin/python``, unresolved, so
    CPython finds the venv's ``pyvenv.cfg`` next to it)."""
    return os.path.abspath(sys.executable)


def compile_ascendcl(
    lib: LibrarySet,
    prototypes: dict[str, symbols.Prototype],
    unusable: Mapping[str, str],
    out: Path,
    work: Path,
) -> Path:
    """libascendcl.so by cffi embedding (see the module docstring); ``unusable`` maps every
    emulated name to the C value it returns without Python (:func:`cabi.build_c.unusable_value`).

    Emulated calls that belong to another library (``lib.elsewhere``: ``acldvppMalloc``, which
    libacl_dvpp.so forwards to ``aclrtMalloc`` in C) get a Python body but no C function: the
    bridge can attach every call it has, and libascendcl exports exactly its own header set."""
    ffi = cffi.FFI()
    emulated = [prototypes[name] for name in lib.emulated]
    bodies = [*emulated, *(prototypes[n] for n in lib.elsewhere)]
    prelude = _struct_prelude(bodies)
    if prelude:
        ffi.cdef(prelude)
    declarations = [build_c.python_declaration(*_abi(proto)) for proto in bodies]
    ffi.cdef("\n".join(f'extern "Python" {d}' for d in declarations))
    ffi.cdef(build_c.READY_DECLARATIONS)
    unsupported = [
        (name, ret)
        for name, ret in lib.functions
        if name not in lib.emulated and name not in build_c.C_IMPLEMENTED
    ]
    wrappers = [build_c.wrapper_source(*_abi(p), unusable[p.name]) for p in emulated]
    source = "\n".join(
        (
            prelude,
            build_c.notes_source(),
            build_c.ascendcl_preamble(
                venv_python(),
                sysconfig.get_paths()["purelib"],
                sysconfig.get_config_var("INSTSONAME") or "",
            ),
            "\n".join(f"static {d}" for d in declarations),
            "\n".join(wrappers),
            build_c.applog_source(),
            build_c.unsupported_source(unsupported),
        )
    )
    libdir = sysconfig.get_config_var("LIBDIR")
    ffi.set_source(
        EMBEDDED_MODULE,
        source,
        extra_compile_args=["-Wno-deprecated-declarations", *_CFLAGS],
        extra_link_args=[f"-Wl,-rpath,{libdir}", f"-Wl,-soname,{out.name}"],
    )
    ffi.embedding_init_code(build_c.init_code(EMBEDDED_MODULE))
    work.mkdir(parents=True, exist_ok=True)
    try:
        built = Path(ffi.compile(tmpdir=str(work), target=out.name, verbose=False))
    except cffi.VerificationError as exc:  # the compiler's or linker's complaint
        raise RuntimeError(f"compiling {out.name} failed: {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), out)
    return out


def _abi(proto: symbols.Prototype) -> tuple[str, str, list[str]]:
    """``(name, abi return type, abi parameter types)`` of ``proto``."""
    return (
        proto.name,
        symbols.abi_type(proto.ret),
        [symbols.abi_type(p.type) for p in proto.params],
    )


def _struct_prelude(prototypes: Iterable[symbols.Prototype]) -> str:
    """The by-value struct definitions some of these calls need in cffi's declarations (and,
    the same text, in the C source, which includes no header), or ""."""
    structs = set(symbols.by_value_structs())
    for proto in prototypes:
        if any(symbols.abi_type(p.type) in structs for p in proto.params if p.type != "..."):
            return symbols.abi_prelude()
    return ""


def compile_all(
    prototypes: Sequence[symbols.Prototype], emulated: Mapping[str, str], lib64: Path, work: Path
) -> dict[str, Path]:
    """Every library of the tree into ``lib64`` (and ``lib64/stub``); returns name -> path.
    ``emulated`` maps each call the bridge emulates to the C value it returns without Python
    (:func:`cabi.build_c.unusable_value`)."""
    sets = library_sets(prototypes, emulated)
    built: dict[str, Path] = {}
    for name, lib in sets.items():
        stub = lib64 / "stub" / f"lib{name}.so"
        built[f"stub/{name}"] = compile_plain(
            build_c.stub_source(lib.functions), stub, work / "stub"
        )
    by_name = {proto.name: proto for proto in prototypes}
    built["ascendcl"] = compile_ascendcl(
        sets["ascendcl"], by_name, emulated, lib64 / "libascendcl.so", work / "ascendcl"
    )
    dvpp = sets["acl_dvpp"]
    dvpp_source = (
        build_c.notes_source()
        + build_c.dvpp_forwarders()
        + build_c.unsupported_source(
            (n, r) for n, r in dvpp.functions if n not in build_c.DVPP_FORWARDED
        )
    )
    built["acl_dvpp"] = compile_plain(
        dvpp_source,
        lib64 / "libacl_dvpp.so",
        work,
        # the stub satisfies the link; at run time $ORIGIN finds the real one next to us
        link_args=[f"-L{lib64 / 'stub'}", "-Wl,-rpath,$ORIGIN"],
        libs=["-lascendcl"],
    )
    cblas = sets["acl_cblas"]
    built["acl_cblas"] = compile_plain(
        build_c.notes_source() + build_c.unsupported_source(cblas.functions),
        lib64 / "libacl_cblas.so",
        work,
    )
    return built
