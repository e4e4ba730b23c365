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

An emulated call is two functions: the public one, generated here (:func:`wrapper_source`), and
its Python body, a static ``extern "Python"`` function named ``_npufarm_py_<name>``
(:func:`extern_name`) whose pointer parameters and pointer result are ``uintptr_t`` (the bridge
gets and gives plain ints: no ``void *`` cdata to convert on every call). The public function
enters Python only while Python is usable (:func:`ascendcl_preamble`); otherwise it answers
without Python (:func:`unusable_value`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from core.errors import ACL_ERROR_FEATURE_UNSUPPORTED, ACL_ERROR_UNINITIALIZE

__all__ = [
    "C_IMPLEMENTED",
    "DVPP_FORWARDED",
    "EXTERN_PREFIX",
    "READY_DECLARATIONS",
    "UNUSABLE_CODE",
    "ReturnKind",
    "applog_source",
    "ascendcl_preamble",
    "dvpp_forwarders",
    "extern_name",
    "init_code",
    "is_release",
    "python_declaration",
    "notes_source",
    "return_kind",
    "stub_source",
    "unsupported_definition",
    "unsupported_source",
    "unsupported_value",
    "unusable_value",
    "wrapper_source",
]

ReturnKind = Literal["code", "null", "zero", "void"]

# what an emulated aclError call returns without entering Python (see ascendcl_preamble):
# ACL_ERROR_UNINITIALIZE, as for a call before aclInit
UNUSABLE_CODE = ACL_ERROR_UNINITIALIZE
EXTERN_PREFIX = "_npufarm_py_"
# the calls that release something: with Python gone the farm reclaims what a departed process
# held, so they succeed without it (C++ static destructors call them after the host's exit)
_RELEASE = re.compile(
    r"^(?:aclrtDestroy|aclrtFree|aclrtResetDevice|aclmdlUnload|aclmdlDestroy|aclDestroy"
    r"|aclFinalize|aclrtUnSubscribeReport|acldvppFree)"
)

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


def extern_name(name: str) -> str:
    """The static ``extern "Python"`` function that holds ``name``'s Python body."""
    return EXTERN_PREFIX + name


def is_release(name: str) -> bool:
    """Whether ``name`` releases something (succeeds when Python is gone; see the module)."""
    return _RELEASE.match(name) is not None


def unusable_value(name: str, abi_ret: str, kind: str, failure: Any = None) -> str:
    """The C expression ``name`` returns without entering Python ("" for void): 0 from a call
    that releases something, :data:`UNUSABLE_CODE` from another ``aclError`` call, NULL from a
    pointer call, and ``failure`` (the bridge's documented failure value, 0 by default) from
    the others. ``kind`` is the bridge's call kind (``error``, ``pointer``, ``value``, ...)."""
    ret_kind = return_kind(abi_ret)
    if ret_kind == "void":
        return ""
    if ret_kind == "null":
        return "NULL"
    if kind == "error":
        return "0" if is_release(name) else str(UNUSABLE_CODE)
    return repr(failure) if isinstance(failure, (int, float)) else "0"


def _python_type(abi: str) -> str:
    return "uintptr_t" if abi.endswith("*") else abi


def python_declaration(name: str, abi_ret: str, abi_params: Sequence[str]) -> str:
    """The declaration of ``name``'s Python body, for cffi's ``cdef`` (prefix it with
    ``extern "Python"``) and for the C source (prefix it with ``static``): every pointer,
    the result too, is a ``uintptr_t``."""
    params = ", ".join(_python_type(p) for p in abi_params) or "void"
    return f"{_python_type(abi_ret)} {extern_name(name)}({params});"


def wrapper_source(name: str, abi_ret: str, abi_params: Sequence[str], unusable: str) -> str:
    """The exported C function of an emulated call: enter its Python body when Python is
    usable (:func:`ascendcl_preamble`), else return ``unusable`` (:func:`unusable_value`)."""
    if any(p == "..." for p in abi_params):
        raise ValueError(f"{name} is variadic: write it in C (C_IMPLEMENTED)")
    ret = abi_ret.strip()
    params = ", ".join(f"{t}{'' if t.endswith('*') else ' '}a{i}" for i, t in enumerate(abi_params))
    args = ", ".join(
        f"(uintptr_t)a{i}" if t.endswith("*") else f"a{i}" for i, t in enumerate(abi_params)
    )
    call = f"{extern_name(name)}({args})"
    if ret == "void":
        body = f"if (!npufarm_enter()) return; {call}; (void)npufarm_started();"
    else:
        result = f"({ret})result" if ret.endswith("*") else "result"
        body = (
            f"{_python_type(ret)} result; if (!npufarm_enter()) return {unusable}; "
            f"result = {call}; return npufarm_started() ? {result} : {unusable};"
        )
    return f"{ret} {name}({params or 'void'}) {{ {body} }}"


def ascendcl_preamble(python: str, site_dir: str = "", libpython: str = "") -> str:
    """C code of libascendcl.so that runs before any call: its Python, when Python is usable,
    and exit.

    cffi starts CPython at the first emulated call and imports ``_cffi_backend`` before our
    init code runs, so the interpreter must see the right site-packages from the start: a
    load-time constructor names ``python`` (or ``$NPUFARM_PYTHON``) as the program, which makes
    CPython find that venv's ``pyvenv.cfg`` and ``sys.executable`` (the embedded farm starts
    with it).

    In a process that already runs Python (an extension module linking libascendcl) the host
    interpreter is used if it is the Python version we were built for (else every call answers
    without Python, after one line on stderr); before the first call enters it, ``site_dir``
    (our venv's site-packages) is added to its ``sys.path``, so cffi and the bridge import even
    from a host venv that lacks them.

    Python is usable while it runs and is not finalizing, until it is gone (finalized by its
    host) or refused (another version, or the Python half failed to start); then calls answer
    without it (:func:`unusable_value`): entering a finalized interpreter crashes in
    ``PyGILState_Ensure`` (C++ static destructors run after the host's ``Py_Finalize``).

    cffi never finalizes the interpreter, so Python's ``atexit`` handlers (the embedded farm's
    stop, the unlinking of pinned host segments) would not run when a C program exits; an
    ``atexit`` hook runs them, and calls made after it (static destructors registered before
    the library was loaded) answer without Python: the client is closed. It does not finalize
    the interpreter: another thread may still be inside a call, and finalizing under it would
    crash the program on its way out.

    A C program may load the library with ``dlopen(RTLD_LOCAL)``; the extension modules Python
    imports (``_cffi_backend``) need libpython's symbols in the global scope, so the
    constructor promotes ``libpython`` (its SONAME) to it."""
    return (
        _PREAMBLE.replace("@PYTHON@", _c_string(python))
        .replace("@SITE_DIR@", _c_string(site_dir))
        .replace("@LIBPYTHON@", _c_string(libpython))
        .replace("@UNUSABLE@", str(UNUSABLE_CODE))
    )


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_PREAMBLE = r"""
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

static const char npufarm_python[] = @PYTHON@;
static const char npufarm_site_dir[] = @SITE_DIR@;
static const char npufarm_libpython[] = @LIBPYTHON@;

static int npufarm_closed;       /* no call enters Python again (exit hook, refused Python) */
static int npufarm_python_seen;  /* a Python ran: not running now means finalized */
static int npufarm_ready;        /* the bridge is installed (the init code says so) */
static int npufarm_told;         /* the reason calls answer without Python was said */
static pthread_once_t npufarm_host_once = PTHREAD_ONCE_INIT;

static void npufarm_close(void) { __atomic_store_n(&npufarm_closed, 1, __ATOMIC_RELEASE); }

static void npufarm_mark_ready(void)  /* the init code, when the bridge is installed */
{
    __atomic_store_n(&npufarm_python_seen, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&npufarm_ready, 1, __ATOMIC_RELEASE);
}

static void npufarm_mark_failed(void)  /* the init code, after saying why */
{
    __atomic_store_n(&npufarm_told, 1, __ATOMIC_RELEASE);
    npufarm_close();
}

static int npufarm_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* The running Python is the version we were built for; else says so once, and refuses it. */
static int npufarm_same_python(void)
{
    char ours[32], running[32];
    const char *version = Py_GetVersion();  /* "3.11.7 (main, ...": the running library's */
    size_t n = 0, dots = 0;
    snprintf(ours, sizeof ours, "%d.%d", PY_MAJOR_VERSION, PY_MINOR_VERSION);
    while (version[n] && version[n] != ' ' && n + 1 < sizeof running) {
        if (version[n] == '.' && ++dots == 2)
            break;
        running[n] = version[n];
        n++;
    }
    running[n] = '\0';
    if (strcmp(ours, running) == 0)
        return 1;
    npufarm_close();
    if (!__atomic_exchange_n(&npufarm_told, 1, __ATOMIC_ACQ_REL))
        fprintf(stderr, "npufarm: libascendcl was built for Python %s; this process runs Python "
                "%s; ACL calls return @UNUSABLE@\n", ours, running);
    return 0;
}

/* A Python someone else started (a host process): ours, and our venv on its sys.path before
   cffi's start imports _cffi_backend from it. */
static void npufarm_adopt_host_python(void)
{
    PyGILState_STATE gil;
    PyObject *site, *dir, *path, *done;
    if (!npufarm_same_python())
        return;
    gil = PyGILState_Ensure();
    site = PyImport_ImportModule("site");
    dir = PyUnicode_DecodeFSDefault(npufarm_site_dir);
    path = PySys_GetObject("path");  /* borrowed */
    if (site != NULL && dir != NULL && path != NULL && PySequence_Contains(path, dir) == 0) {
        done = PyObject_CallMethod(site, "addsitedir", "O", dir);
        Py_XDECREF(done);
    }
    if (PyErr_Occurred())
        PyErr_Print();
    Py_XDECREF(dir);
    Py_XDECREF(site);
    PyGILState_Release(gil);
}

/* Until the bridge is installed: Python not running is Python still to start (cffi starts it)
   unless one ran before; a running one someone else started is adopted first. */
static int npufarm_before_start(void)
{
    if (__atomic_load_n(&npufarm_closed, __ATOMIC_ACQUIRE))
        return 0;
    if (!Py_IsInitialized())
        return !__atomic_load_n(&npufarm_python_seen, __ATOMIC_ACQUIRE);
    if (npufarm_finalizing())
        return 0;
    __atomic_store_n(&npufarm_python_seen, 1, __ATOMIC_RELEASE);
    pthread_once(&npufarm_host_once, npufarm_adopt_host_python);
    return !__atomic_load_n(&npufarm_closed, __ATOMIC_ACQUIRE);
}

/* Whether a call may enter Python now. */
static inline int npufarm_enter(void)
{
    if (__builtin_expect(!__atomic_load_n(&npufarm_ready, __ATOMIC_ACQUIRE), 0))
        return npufarm_before_start();
    if (__atomic_load_n(&npufarm_closed, __ATOMIC_ACQUIRE))
        return 0;
    return Py_IsInitialized() && !npufarm_finalizing();
}

/* After a call entered Python: whether the bridge answered it (not cffi's default 0 after a
   start that failed, e.g. no cffi importable); the first failure closes the library. */
static inline int npufarm_started(void)
{
    if (__builtin_expect(__atomic_load_n(&npufarm_ready, __ATOMIC_ACQUIRE), 1))
        return 1;
    npufarm_close();
    if (!__atomic_exchange_n(&npufarm_told, 1, __ATOMIC_ACQ_REL))
        fprintf(stderr, "npufarm: libascendcl could not start its Python half (see above); "
                "ACL calls return @UNUSABLE@\n");
    return 0;
}

static void npufarm_run_python_atexit(void)
{
    PyGILState_STATE gil;
    if (Py_IsInitialized() && !npufarm_finalizing()
        && __atomic_load_n(&npufarm_ready, __ATOMIC_ACQUIRE)) {
        gil = PyGILState_Ensure();
        PyRun_SimpleString("import atexit\natexit._run_exitfuncs()\n");
        PyGILState_Release(gil);
    }
    npufarm_close();  /* the client is closed: later calls (static destructors) skip Python */
}

__attribute__((constructor)) static void npufarm_on_load(void)
{
    const char *chosen = getenv("NPUFARM_PYTHON");
    wchar_t *program;  /* kept for the life of the process, as Py_SetProgramName requires */
    if (Py_IsInitialized()) {  /* loaded into a running Python: use it, if it is ours */
        __atomic_store_n(&npufarm_python_seen, 1, __ATOMIC_RELEASE);
        npufarm_same_python();
        return;
    }
    atexit(npufarm_run_python_atexit);
    if (*npufarm_libpython)  /* loaded already, as our dependency: only its scope changes */
        dlopen(npufarm_libpython, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
    if (chosen == NULL || *chosen == '\0')
        chosen = npufarm_python;
    program = Py_DecodeLocale(chosen, NULL);
    if (program != NULL)
        Py_SetProgramName(program);  /* deprecated in 3.11, still the way before Py_Initialize */
}
"""

READY_DECLARATIONS = "void npufarm_mark_ready(void);\nvoid npufarm_mark_failed(void);\n"
"""The preamble's functions the init code calls (cffi ``cdef`` text)."""


def init_code(module: str, bridge: str = "cabi.bridge") -> str:
    """The Python that cffi runs once, at the first emulated call: attach the bridge under the
    Python bodies' names (:func:`extern_name`) with pointers as ints, and tell the C half.

    If the bridge cannot be loaded (the venv was moved, a package is missing) it says so in one
    line on stderr and the C half answers every call without Python (:data:`UNUSABLE_CODE`
    from an ``aclError`` call) instead of cffi's default of returning 0, which a C program would
    read as success."""
    return f"""\
import sys

from {module} import ffi, lib


def _attach():
    try:
        import {bridge}

        {bridge}.install(ffi, prefix={EXTERN_PREFIX!r}, handles_as_ints=True)
    except BaseException as exc:  # noqa: BLE001 - a C program must get codes, not a crash
        sys.stderr.write(
            "npufarm: libascendcl could not load its Python half (%r); ACL calls "
            "return {UNUSABLE_CODE}\\n" % (exc,)
        )
        lib.npufarm_mark_failed()
    else:
        lib.npufarm_mark_ready()


_attach()
"""
