"""``acl.prof``: profiling (aclprof*): not emulated.

Every call returns ACL_ERROR_FEATURE_UNSUPPORTED (200006), logged once per name; the value also
unpacks as ``(0, 200006)`` (see :class:`acl._facade.Unsupported`). ``import acl.prof`` works, so a
program that only touches it on an optional path runs unchanged.
"""

from acl._facade import module_getattr

__all__: list[str] = []

__getattr__ = module_getattr("acl.prof")
