"""The npufarm client library: ACL state, the connection to a farm, the memory layer.

``RUNTIME`` is the process-wide ACL runtime the ``acl`` facade forwards to.
"""

from client.callbacks import CallbackApi
from client.dynamic import DynamicShapeApi
from client.exceptions import ExceptionApi
from client.memops import MemoryApi
from client.models import ModelApi
from client.runtime import Runtime
from client.streams import StreamApi

__all__ = ["RUNTIME", "AclRuntime"]


class AclRuntime(
    DynamicShapeApi, ModelApi, MemoryApi, CallbackApi, ExceptionApi, StreamApi, Runtime
):
    """Every ACL call of one process: the runtime core plus its stream, exception-info,
    callback, memory, model and dynamic-shape parts."""


RUNTIME = AclRuntime()
