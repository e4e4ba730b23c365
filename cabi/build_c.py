"""The C half of the toolkit tree's libraries, as source text (pure functions, no compiler here).

Every public function of a library's header set is defined: the emulated ones by cffi (their
Python bodies live in :mod:`cabi.bridge`), a few in plain C here (``aclAppLog``; the DVPP
allocator forwarding to ``aclrtMalloc``), and every other one as an "unsupported" body that
returns what the Python facade returns for an unknown call: ACL_ERROR_FEATURE_UNSUPPORTED for an
``aclError``/``int``/enum result, NULL for a pointer, 0 for any other scalar, and that says so
once per name on stderr.

Unsupported and stub bodies are written with an empty parameter list (``int f() {...}``, an
old-style C definition): only the return type matters to the ABI of a body that ignores its
arguments, and the caller, compiled against our headers, passes them as it always does. This
keeps the generated code free of every header type (some are structs passed by value) and
lets it sit in the same translation unit as cffi's declarations, which use ABI-equivalent
types (:func:`cabi.symbols.abi_decl`) that would clash with the headers' own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from core.errors import ACL_ERROR_FEATURE_UNSUPPORTED

__all__ = [
    "C_IMPLEMENTED",
    "DVPP_FORWARDED",
    "INIT_FAILURE_CODE",
    "ReturnKind",
    "applog_source",
    "ascendcl_preamble",
    "dvpp_forwarders",
    "init_code",
    "notes_source",
    "return_kind",
    "stub_source",
    "unsupported_definition",
    "unsupported_source",
    "unsupported_value",
]

ReturnKind = Literal["code", "null", "zero", "void"]

# what an emulated aclError call returns when the library's Python half could not be loaded at
# all: ACL_ERROR_INTERNAL_ERROR, as the bridge answers when one of its bodies fails unexpectedly
INIT_FAILURE_CODE = 500000

# written in C here, whatever the bridge emulates: a variadic call cffi cannot take, and the
# DVPP allocator, which is device memory and forwards to libascendcl
C_IMPLEMENTED = frozenset({"aclAppLog"})
DVPP_FORWARDED = {
    # name -> the C body (aclrtMalloc's policy 0 is ACL_MEM_MALLOC_HUGE_FIRST)
    "acldvppMalloc": "return aclrtMalloc(devPtr, size, 0);",
    "acldvppFree": "return aclrtFree(devPtr);",
}
_DVPP_SIGNATURES = {
    "acldvppMalloc": "int acldvppMalloc(void **devPtr, size_t size)",
    "acldvppFree": "int acldvppFree(void *devPtr)",
}


def return_kind(abi_ret: str) -> ReturnKind:
    """How an unsupported call with this ABI return type answers (see the module docstring)."""
    ret = " ".join(abi_ret.replace("*", " * ").split())
    if ret == "void":
        return "void"
    if ret.endswith("*"):
        return "null"
    if ret == "int":  # aclError and every enum map to int (cabi.symbols.abi_type)
        return "code"
    return "zero"


_VALUES = {"code": str(ACL_ERROR_FEATURE_UNSUPPORTED), "null": "NULL", "zero": "0", "void": ""}


def unsupported_value(kind: ReturnKind) -> str:
    """The C expression an unsupported call returns ("" for void)."""
    return _VALUES[kind]


_SAID = {
    "code": f"returning {ACL_ERROR_FEATURE_UNSUPPORTED} (ACL_ERROR_FEATURE_UNSUPPORTED)",
    "null": "returning NULL",
    "zero": "returning 0",
    "void": "doing nothing",
}


def unsupported_definition(name: str, abi_ret: str, note: str = "npufarm_not_emulated") -> str:
    """One C definition: ``<ret> name() { <note>(&once, "name", "..."); return <value>; }``.

    ``note`` is the C function that tells the user once (see :func:`unsupported_source`)."""
    kind = return_kind(abi_ret)
    value = unsupported_value(kind)
    ret = abi_ret.strip()
    body = f'static int once; {note}(&once, "{name}", "{_SAID[kind]}");'
    tail = f" return {value};" if value else ""
    return f"{ret} {name}() {{ {body}{tail} }}"


_NOTE_FUNCTIONS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>

/* Says once per call name (thread-safe) what an unsupported call does. */
__attribute__((unused)) static void npufarm_not_emulated(int *once, const char *name,
                                                         const char *action)
{
    if (!__atomic_exchange_n(once, 1, __ATOMIC_RELAXED))
        fprintf(stderr, "npufarm: %s is not emulated; %s\n", name, action);
}

/* The stub libraries are for linking only; a program that runs against one was started
   without the toolkit's set_env.sh (LD_LIBRARY_PATH must name runtime/lib64, not its stub/). */
__attribute__((unused)) static void npufarm_stub_called(int *once, const char *name,
                                                        const char *action)
{
    if (!__atomic_exchange_n(once, 1, __ATOMIC_RELAXED))
        fprintf(stderr, "npufarm: %s called in a link-time stub library (source the toolkit's "
                "set_env.sh so runtime/lib64 is found first); %s\n", name, action);
}
"""


def notes_source() -> str:
    """The includes and the tell-once helpers every generated library starts with."""
    return _NOTE_FUNCTIONS


def unsupported_source(definitions: Iterable[tuple[str, str]], stub: bool = False) -> str:
    """C definitions of every ``(name, abi_ret)`` pair as unsupported (or as a stub); they use
    the helpers of :func:`notes_source`, which must come first in the translation unit."""
    note = "npufarm_stub_called" if stub else "npufarm_not_emulated"
    return "\n".join(unsupported_definition(name, ret, note) for name, ret in definitions) + "\n"


def stub_source(definitions: Iterable[tuple[str, str]]) -> str:
    """A link-time stub library: every name, no Python, no dependency."""
    return (
        "/* npufarm link-time stub: every symbol of the header set. */\n"
        + notes_source()
        + unsupported_source(definitions, stub=True)
    )


def applog_source() -> str:
    """``aclAppLog``: the application's log line on stderr, from ASCEND_GLOBAL_LOG_LEVEL up.

    aclLogLevel: 0 debug, 1 info, 2 warning, 3 error; CANN's variable takes the same numbers
    (4 = off). Unset, info and above are shown (CANN writes them to its log files; stderr is
    the only place the farm has)."""
    return r"""
#include <stdarg.h>
#include <string.h>

void aclAppLog(int logLevel, const char *func, const char *file, uint32_t line,
               const char *fmt, ...)
{
    static const char *names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
    const char *threshold = getenv("ASCEND_GLOBAL_LOG_LEVEL");
    int shown_from = (threshold && *threshold) ? atoi(threshold) : 1;
    char text[4096];
    va_list args;
    if (logLevel < shown_from || fmt == NULL)
        return;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    fprintf(stderr, "[%s] %s %s:%u: %s\n",
            (logLevel >= 0 && logLevel <= 3) ? names[logLevel] : "LOG",
            func ? func : "?", file ? file : "?", (unsigned)line, text);
}
"""


def dvpp_forwarders() -> str:
    """``acldvppMalloc``/``acldvppFree`` over libascendcl's ``aclrtMalloc``/``aclrtFree``."""
    lines = [
        "int aclrtMalloc(void **devPtr, size_t size, int policy);",
        "int aclrtFree(void *devPtr);",
    ]
    for name, body in DVPP_FORWARDED.items():
        lines.append(f"{_DVPP_SIGNATURES[name]} {{ {body} }}")
    return "\n".join(lines) + "\n"


def ascendcl_preamble(python: str) -> str:
    """C code of libascendcl.so that runs before any call: where its Python is, and exit.

    cffi starts CPython at the first emulated call and imports ``_cffi_backend`` before our
    init code runs, so the interpreter must see the right site-packages from the start: a
    load-time constructor names ``python`` (or ``$NPUFARM_PYTHON``) as the program, which makes
    CPython find that venv's ``pyvenv.cfg`` and ``sys.executable`` (the embedded farm starts
    with it). In a process that already runs Python (an extension module linking
    libascendcl) the host interpreter is used as is and nothing here runs.

    cffi never finalizes the interpreter, so Python's ``atexit`` handlers (the embedded farm's
    stop, the unlinking of pinned host segments) would not run when a C program exits; an
    ``atexit`` hook runs them. It does not finalize the interpreter: another thread may still
    be inside a call, and finalizing under it would crash the program on its way out."""
    quoted = python.replace("\\", "\\\\").replace('"', '\\"')
    return rf"""
static const char npufarm_python[] = "{quoted}";

static void npufarm_run_python_atexit(void)
{{
    PyGILState_STATE gil;
    if (!Py_IsInitialized())
        return;  /* no call reached Python: nothing to clean up */
    gil = PyGILState_Ensure();
    PyRun_SimpleString("import atexit\natexit._run_exitfuncs()\n");
    PyGILState_Release(gil);
}}

__attribute__((constructor)) static void npufarm_name_python(void)
{{
    const char *chosen = getenv("NPUFARM_PYTHON");
    wchar_t *program;  /* kept for the life of the process, as Py_SetProgramName requires */
    if (Py_IsInitialized())
        return;  /* loaded into a running Python: use it */
    if (chosen == NULL || *chosen == '\0')
        chosen = npufarm_python;
    program = Py_DecodeLocale(chosen, NULL);
    if (program == NULL)
        return;
    Py_SetProgramName(program);  /* deprecated in 3.11, still the way before Py_Initialize */
    atexit(npufarm_run_python_atexit);
}}
"""


_FALLBACK_VALUES = {"code": INIT_FAILURE_CODE, "null": "NULL", "zero": 0, "void": None}


def init_code(
    module: str, site_dir: str, fallback: Mapping[str, ReturnKind], bridge: str = "cabi.bridge"
) -> str:
    """The Python that cffi runs once, at the first emulated call: attach the bridge.

    If the bridge cannot be loaded (the venv was moved, a package is missing) every emulated
    call returns :data:`INIT_FAILURE_CODE` (NULL/0 for other return types) after one line on
    stderr, instead of cffi's default of returning 0, which a C program would read as
    success."""
    values = {name: _FALLBACK_VALUES[kind] for name, kind in sorted(fallback.items())}
    return f"""\
import sys

_SITE = {site_dir!r}
if _SITE not in sys.path:  # a host interpreter (Python extension) may not have our venv yet
    import site

    site.addsitedir(_SITE)

from {module} import ffi


def _attach():
    try:
        import {bridge}

        {bridge}.install(ffi)
    except BaseException as exc:  # noqa: BLE001 - a C program must get codes, not a crash
        sys.stderr.write(
            "npufarm: libascendcl could not load its Python half (%r); emulated calls "
            "return {INIT_FAILURE_CODE}\\n" % (exc,)
        )
        for name, value in {values!r}.items():
            result = ffi.NULL if value == "NULL" else value
            ffi.def_extern(name=name)(lambda *args, _result=result: _result)


_attach()
"""
