"""The npufarm client library: ACL state, the connection to a farm, the memory layer.

``RUNTIME`` is the process-wide ACL runtime the ``acl`` facade forwards to.
"""

from client.models import ModelRuntime

__all__ = ["RUNTIME", "ModelRuntime"]

RUNTIME = ModelRuntime()
