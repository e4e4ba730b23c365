"""``acl.rt``: devices, contexts, streams, events and memory (aclrt* calls)."""

from acl._facade import module_getattr, runtime_call

__all__ = [
    "get_device_count",
    "set_device",
    "reset_device",
    "get_device",
    "query_device_status",
    "get_run_mode",
    "get_soc_name",
    "set_device_sat_mode",
    "get_device_sat_mode",
    "synchronize_device",
    "synchronize_device_with_timeout",
    "create_context",
    "destroy_context",
    "set_context",
    "get_context",
    "create_stream",
    "destroy_stream",
    "destroy_stream_force",
    "synchronize_stream",
    "synchronize_stream_with_timeout",
    "stream_query",
    "create_event",
    "create_event_with_flag",
    "destroy_event",
    "record_event",
    "synchronize_event",
    "synchronize_event_with_timeout",
    "query_event_status",
    "stream_wait_event",
    "event_elapsed_time",
    "malloc",
    "free",
    "malloc_host",
    "free_host",
    "memcpy",
    "memcpy_async",
    "memset",
    "memset_async",
    "get_mem_info",
    "subscribe_report",
    "unsubscribe_report",
    "launch_callback",
    "process_report",
    "set_exception_info_callback",
    "get_task_id_from_exception_info",
    "get_stream_id_from_exception_info",
    "get_thread_id_from_exception_info",
    "get_device_id_from_exception_info",
    "get_error_code_from_exception_info",
]

get_device_count = runtime_call("get_device_count")
set_device = runtime_call("set_device")
reset_device = runtime_call("reset_device")
get_device = runtime_call("get_device")
query_device_status = runtime_call("query_device_status")
get_run_mode = runtime_call("get_run_mode")
get_soc_name = runtime_call("get_soc_name")
set_device_sat_mode = runtime_call("set_device_sat_mode")
get_device_sat_mode = runtime_call("get_device_sat_mode")
synchronize_device = runtime_call("synchronize_device")
synchronize_device_with_timeout = runtime_call("synchronize_device_with_timeout")
create_context = runtime_call("create_context")
destroy_context = runtime_call("destroy_context")
set_context = runtime_call("set_context")
get_context = runtime_call("get_context")
create_stream = runtime_call("create_stream")
destroy_stream = runtime_call("destroy_stream")
destroy_stream_force = runtime_call("destroy_stream_force")
synchronize_stream = runtime_call("synchronize_stream")
synchronize_stream_with_timeout = runtime_call("synchronize_stream_with_timeout")
stream_query = runtime_call("stream_query")
create_event = runtime_call("create_event")
create_event_with_flag = runtime_call("create_event_with_flag")
destroy_event = runtime_call("destroy_event")
record_event = runtime_call("record_event")
synchronize_event = runtime_call("synchronize_event")
synchronize_event_with_timeout = runtime_call("synchronize_event_with_timeout")
query_event_status = runtime_call("query_event_status")
stream_wait_event = runtime_call("stream_wait_event")
event_elapsed_time = runtime_call("event_elapsed_time")
malloc = runtime_call("malloc")
free = runtime_call("free")
malloc_host = runtime_call("malloc_host")
free_host = runtime_call("free_host")
memcpy = runtime_call("memcpy")
memcpy_async = runtime_call("memcpy_async")
memset = runtime_call("memset")
memset_async = runtime_call("memset_async")
get_mem_info = runtime_call("get_mem_info")
subscribe_report = runtime_call("subscribe_report")
unsubscribe_report = runtime_call("unsubscribe_report")
launch_callback = runtime_call("launch_callback")
process_report = runtime_call("process_report")
set_exception_info_callback = runtime_call("set_exception_info_callback")
get_task_id_from_exception_info = runtime_call("get_task_id_from_exception_info")
get_stream_id_from_exception_info = runtime_call("get_stream_id_from_exception_info")
get_thread_id_from_exception_info = runtime_call("get_thread_id_from_exception_info")
get_device_id_from_exception_info = runtime_call("get_device_id_from_exception_info")
get_error_code_from_exception_info = runtime_call("get_error_code_from_exception_info")

__getattr__ = module_getattr("acl.rt")
