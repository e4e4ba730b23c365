"""Where a sanitizer finding happened, in the user's own code.

A finding is only useful if it points at the program's line, not at npufarm's: the first frame
outside npufarm's packages (``acl``, ``client``, ``farm``, ``device``) is the *site*, and the
next user frames up the stack show who called it, so a read hidden in a helper of the user's is
still traced to the code that called the helper. Library frames (the standard library, e.g.
``threading``'s bootstrap of a report thread, and installed packages such as a test runner)
are left out of the stack past the site; they say nothing about the program.

A call that came from C through libascendcl (:mod:`cabi.bridge`) has no user frame at all: the
C program's frames are not Python's. Its site is then the C entry point, ``"<C> aclrtMemcpy"``
(the innermost bridge function named as the C call), not a line of the bridge. A C function
called from Python (an extension module linking libascendcl) keeps its Python caller as site.

Frames are kept raw (``(filename, line, function)``) and formatted only when a finding is made:
the sanitizer captures the submit stack of every async task, so capture must stay cheap (a walk
of a few frames with a per-file cache).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import sysconfig

__all__ = ["C_CALLER", "Frame", "format_frame", "format_stack", "user_frames", "user_site"]

logger = logging.getLogger(__name__)

Frame = tuple[str, int, str]  # (filename, line, function)

_PACKAGES = ("acl", "cabi", "client", "farm", "device", "core", "loadtest", "npufarm")
_C_ENTRY_FOLDER = ("cabi", "bridge")  # cabi/bridge: its acl* functions are the C entry points
STACK_DEPTH = 6
"""User frames kept per stack (the site first)."""
C_CALLER = "<C>"
"""The file of the frame standing for a C caller: ``(C_CALLER, 0, "aclrtMemcpy")``."""


def _own_dirs(packages: tuple[str, ...] = _PACKAGES) -> tuple[str, ...]:
    """Directory prefixes of npufarm's own packages (frames there are not the caller's)."""
    prefixes: set[str] = set()
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for path in (os.path.abspath(folder), os.path.realpath(folder)):
                prefixes.add(os.path.normcase(path) + os.sep)
    return tuple(sorted(prefixes))


def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {
        os.path.normcase(os.path.realpath(paths[key])) + os.sep
        for key in ("stdlib", "platstdlib")
        if paths.get(key)
    }
    return tuple(sorted(found))


_OWN_DIRS = _own_dirs()
_C_ENTRY_DIRS = tuple(  # found, not imported: the client never imports the C ABI
    os.path.join(prefix, _C_ENTRY_FOLDER[1]) + os.sep for prefix in _own_dirs(_C_ENTRY_FOLDER[:1])
)
_STDLIB_DIRS = _stdlib_dirs()
_OWN, _LIBRARY, _USER, _C_ENTRY = 0, 1, 2, 3
_kind_of: dict[str, int] = {}  # co_filename -> _OWN / _LIBRARY / _USER / _C_ENTRY (cache)


def _classify(filename: str) -> int:
    kind = _kind_of.get(filename)
    if kind is None:
        path = os.path.normcase(os.path.abspath(filename))
        if _C_ENTRY_DIRS and path.startswith(_C_ENTRY_DIRS):
            kind = _C_ENTRY  # npufarm's own too
        elif path.startswith(_OWN_DIRS):
            kind = _OWN
        elif (
            filename.startswith("<frozen ")
            or "-packages" + os.sep in path
            or (os.path.normcase(os.path.realpath(filename)).startswith(_STDLIB_DIRS))
        ):
            kind = _LIBRARY
        else:
            kind = _USER
        if len(_kind_of) > 65536:  # generated code can make endless names
            _kind_of.clear()
        _kind_of[filename] = kind
    return kind


def user_frames(skip: int = 1, depth: int = STACK_DEPTH) -> tuple[Frame, ...]:
    """The caller's stack outside npufarm, innermost first, at most ``depth`` frames.

    The first frame outside npufarm's packages always comes first (even a library one: it is
    where control left npufarm); later library frames (the standard library, site-packages:
    a test runner, a thread's bootstrap) are skipped. A call from C (no frame outside npufarm,
    the innermost C entry point of :mod:`cabi.bridge` on the way) is the one frame
    ``(C_CALLER, 0, "<C function>")``."""
    frame = sys._getframe(skip + 1)
    found: list[Frame] = []
    c_entry = None
    while frame is not None and len(found) < depth:
        code = frame.f_code
        kind = _classify(code.co_filename)
        if kind == _USER or (kind == _LIBRARY and not found):
            found.append((code.co_filename, frame.f_lineno, code.co_name))
        elif kind == _C_ENTRY and c_entry is None and code.co_name.startswith("acl"):
            c_entry = code.co_name
        frame = frame.f_back
    if not found and c_entry is not None:
        return ((C_CALLER, 0, c_entry),)
    return tuple(found)


def user_site(frames: tuple[Frame, ...]) -> str:
    """``"file:line"`` of the innermost user frame (``"<unknown>"`` if there is none;
    ``"<C> aclrtMemcpy"`` for a C caller)."""
    return format_frame(frames[0], with_function=False) if frames else "<unknown>"


def format_frame(frame: Frame, with_function: bool = True) -> str:
    if frame[0] == C_CALLER:
        return f"{C_CALLER} {frame[2]}"
    where = f"{frame[0]}:{frame[1]}"
    return f"{where} in {frame[2]}" if with_function else where


def format_stack(frames: tuple[Frame, ...]) -> tuple[str, ...]:
    return tuple(format_frame(frame) for frame in frames)
