"""The ``aclInit`` / ``acl.init`` configuration file, checked as CANN checks it (pure).

CANN's ``aclInit`` (hicann/runtime ``src/acl/aclrt_impl/acl.cpp`` with ``GetStrFromConfigPath``
in ``acl_rt_impl_base.cpp`` and ``JsonParser::ParseJsonFromFile`` in
``src/acl/common/json_parser.cpp``):

- NULL or ``""``: no configuration; success;
- a path that does not resolve (missing file or directory) → ACL_ERROR_INVALID_FILE (100003);
  so does a path that is not a regular file, or a file over 10 MiB;
- an empty file (0 bytes): no configuration; success;
- text that is not JSON, or whose ``{`` / ``[`` nesting (counted character by character) goes
  deeper than 10 → ACL_ERROR_PARSE_FILE (100006). Like the nlohmann stream read CANN uses,
  the first JSON value is parsed and what follows it is ignored; ``{}`` is fine.

npufarm reads no key of the file (dump, profiling and error-message settings do not apply);
the checks are all it does.
"""

from __future__ import annotations

import json
import logging
import os
import stat

from core.errors import ACL_ERROR_INVALID_FILE, ACL_ERROR_PARSE_FILE, ACL_SUCCESS

__all__ = ["MAX_CONFIG_BYTES", "MAX_NESTING", "config_error"]

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 10 * 1024 * 1024
"""CANN's limit on the size of the configuration file."""
MAX_NESTING = 10
"""CANN's limit on object (and, separately, array) nesting."""


def _nesting(text: str) -> tuple[int, int]:
    """The deepest ``{`` and ``[`` nesting of ``text``, counted on characters (strings too,
    as CANN counts them)."""
    objects = arrays = deepest_objects = deepest_arrays = 0
    for char in text:
        if char == "{":
            objects += 1
            deepest_objects = max(deepest_objects, objects)
        elif char == "}":
            objects = max(objects - 1, 0)
        elif char == "[":
            arrays += 1
            deepest_arrays = max(deepest_arrays, arrays)
        elif char == "]":
            arrays = max(arrays - 1, 0)
    return deepest_objects, deepest_arrays


def config_error(path: str | None) -> tuple[int, str]:
    """``(code, reason)`` for an ``aclInit`` configuration path: ``(0, "")`` when CANN accepts
    it, else 100003 (unusable path) or 100006 (not JSON)."""
    if not path:
        return ACL_SUCCESS, ""
    try:
        info = os.stat(os.path.realpath(path, strict=True))
    except (OSError, ValueError) as exc:
        return ACL_ERROR_INVALID_FILE, f"config file {path!r} is not a real path ({exc})"
    if not stat.S_ISREG(info.st_mode):
        return ACL_ERROR_INVALID_FILE, f"config file {path!r} is not a regular file"
    if info.st_size > MAX_CONFIG_BYTES:
        return ACL_ERROR_INVALID_FILE, f"config file {path!r} is over {MAX_CONFIG_BYTES} bytes"
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        return ACL_ERROR_INVALID_FILE, f"config file {path!r} cannot be read ({exc})"
    if not raw:
        return ACL_SUCCESS, ""
    text = raw.decode("utf-8", errors="replace")
    if max(_nesting(text)) > MAX_NESTING:
        return ACL_ERROR_PARSE_FILE, f"config file {path!r} nests deeper than {MAX_NESTING}"
    try:
        json.JSONDecoder().raw_decode(text.lstrip())
    except ValueError as exc:
        return ACL_ERROR_PARSE_FILE, f"config file {path!r} is not JSON ({exc})"
    return ACL_SUCCESS, ""
