"""pyACL-compatible facade: ``import acl`` runs unmodified AscendCL Python programs on npufarm.

Handles and pointers are ints; calls with out-parameters return tuples with the return code
last, exactly as pyACL does. All logic lives in :mod:`client`; this package only binds names.
``acl.media``, ``acl.op``, ``acl.prof`` and ``acl.himpi`` exist but are not emulated: their calls
return 200006.

Before ``acl.init`` (as on hardware, where they ask the driver): ``acl.rt.get_device_count``,
``acl.get_soc_name`` / ``acl.rt.get_soc_name`` (ask the farm, :mod:`client.discovery`),
``acl.get_version`` and ``acl.rt.get_run_mode``; every other call returns 100001.
"""

from acl import constants, himpi, mdl, media, op, prof, rt, util
from acl._facade import handle_call, module_getattr, runtime_call

__all__ = [
    "constants",
    "mdl",
    "rt",
    "util",
    "media",
    "op",
    "prof",
    "himpi",
    "init",
    "finalize",
    "get_recent_err_msg",
    "get_soc_name",
    "get_version",
    "create_data_buffer",
    "destroy_data_buffer",
    "update_data_buffer",
    "get_data_buffer_addr",
    "get_data_buffer_size",
    "get_data_buffer_size_v2",
]

init = runtime_call("init")
finalize = runtime_call("finalize")
get_recent_err_msg = runtime_call("get_recent_err_msg")
get_soc_name = runtime_call("get_soc_name")
get_version = runtime_call("get_version")
create_data_buffer = handle_call("create_data_buffer")
destroy_data_buffer = handle_call("destroy_data_buffer")
update_data_buffer = handle_call("update_data_buffer")
get_data_buffer_addr = handle_call("get_data_buffer_addr")
get_data_buffer_size = handle_call("get_data_buffer_size")
get_data_buffer_size_v2 = handle_call("get_data_buffer_size_v2")

__getattr__ = module_getattr("acl")
