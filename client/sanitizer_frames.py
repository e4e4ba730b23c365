"""Where a sanitizer finding happened, in the user's own code.

A finding is only useful if it points at the program's line, not at npufarm's: the first frame
outside npufarm's packages (``acl``, ``client``, ``farm``, ``device``) is the *site*, and the
next user frames up the stack show who called it, so a read hidden in a helper of the user's is
still traced to the code that called the helper. Library frames (the standard library, e.g.
``threading``'s bootstrap of a report thread, and installed packages such as a test runner)
are left out of the stack past the site; they say nothing about the program.

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

__all__ = ["Frame", "format_frame", "format_stack", "user_frames", "user_site"]

logger = logging.getLogger(__name__)

Frame = tuple[str, int, str]  # (filename, line, function)

_PACKAGES = ("acl", "client", "farm", "device", "core", "loadtest", "npufarm")
STACK_DEPTH = 6
"""User frames kept per stack (the site first)."""


def _own_dirs() -> tuple[str, ...]:
    """Directory prefixes of npufarm's own packages (frames there are not the caller's)."""
    prefixes: set[str] = set()
    for name in _PACKAGES:
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
_STDLIB_DIRS = _stdlib_dirs()
_OWN, _LIBRARY, _USER = 0, 1, 2
_kind_of: dict[str, int] = {}  # co_filename -> _OWN / _LIBRARY / _USER (cache)


def _classify(filename: str) -> int:
    kind = _kind_of.get(filename)
    if kind is None:
        path = os.path.normcase(os.path.abspath(filename))
        if path.startswith(_OWN_DIRS):
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
    a test runner, a thread's bootstrap) are skipped."""
    frame = sys._getframe(skip + 1)
    found: list[Frame] = []
    while frame is not None and len(found) < depth:
        code = frame.f_code
        kind = _classify(code.co_filename)
        if kind == _USER or (kind == _LIBRARY and not found):
            found.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return tuple(found)


def user_site(frames: tuple[Frame, ...]) -> str:
    """``"file:line"`` of the innermost user frame (``"<unknown>"`` if there is none)."""
    return f"{frames[0][0]}:{frames[0][1]}" if frames else "<unknown>"


def format_frame(frame: Frame) -> str:
    return f"{frame[0]}:{frame[1]} in {frame[2]}"


def format_stack(frames: tuple[Frame, ...]) -> tuple[str, ...]:
    return tuple(format_frame(frame) for frame in frames)
