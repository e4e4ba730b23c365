"""The npufarm client library: ACL state, the connection to a farm, the memory layer.

``RUNTIME`` is the process-wide ACL runtime the ``acl`` facade forwards to
(:class:`client.runtime.AclRuntime`).
"""

from client.runtime import AclRuntime

__all__ = ["RUNTIME", "AclRuntime"]

RUNTIME = AclRuntime()
