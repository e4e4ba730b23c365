"""``acl.mdl``: model loading, descriptions, datasets, execution (aclmdl* calls)."""

from acl._facade import handle_call, module_getattr, runtime_call

__all__ = [
    "load_from_file",
    "load_from_mem",
    "unload",
    "get_desc",
    "get_aipp_type",
    "get_first_aipp_info",
    "get_aipp_data_size",
    "execute",
    "execute_async",
    "execute_v2",
    "execute_async_v2",
    "create_desc",
    "destroy_desc",
    "get_num_inputs",
    "get_num_outputs",
    "get_input_size_by_index",
    "get_output_size_by_index",
    "get_input_dims",
    "get_output_dims",
    "get_cur_output_dims",
    "get_input_data_type",
    "get_output_data_type",
    "get_input_format",
    "get_output_format",
    "get_input_name_by_index",
    "get_output_name_by_index",
    "get_input_index_by_name",
    "get_output_index_by_name",
    "create_dataset",
    "add_dataset_buffer",
    "get_dataset_num_buffers",
    "get_dataset_buffer",
    "destroy_dataset",
    "create_exec_config_handle",
    "set_exec_config_opt",
    "destroy_exec_config_handle",
    "get_dynamic_batch",
    "get_dynamic_hw",
    "get_input_dynamic_gear_count",
    "get_input_dynamic_dims",
    "set_dynamic_batch_size",
    "set_dynamic_hw_size",
    "set_input_dynamic_dims",
]

# summaries used when the runtime method has no docstring of its own
load_from_file = runtime_call(
    "load_from_file",
    "Load an npufarm .om (``npufarm atc``) or TOML model onto the current device: "
    "``(model_id, ret)``; 145002 bad path, 145006 not a model (a real Ascend .om).",
)
load_from_mem = runtime_call(
    "load_from_mem",
    "Load an .om or TOML model from host memory: ``(model_id, ret)``; NULL/size 0 → 100000, "
    "145006 not a model.",
)
unload = runtime_call("unload", "Unload a model; unknown id → 145003.")
get_desc = runtime_call("get_desc", "Fill a model description from a loaded model; 145003.")
get_aipp_type = runtime_call("get_aipp_type")
get_first_aipp_info = runtime_call("get_first_aipp_info")
get_aipp_data_size = runtime_call("get_aipp_data_size")
execute = runtime_call("execute", "Synchronous execute on the current context; the task's code.")
execute_async = runtime_call("execute_async", "Queue one execution on the stream (only enqueues).")
execute_v2 = runtime_call(
    "execute_v2", "Synchronous execute on a stream with an exec-config handle's timeout."
)
execute_async_v2 = runtime_call(
    "execute_async_v2", "Queue one execution with an exec-config handle (sync timeouts)."
)
create_desc = handle_call("create_desc")
destroy_desc = handle_call("destroy_desc")
get_num_inputs = handle_call("get_num_inputs")
get_num_outputs = handle_call("get_num_outputs")
get_input_size_by_index = handle_call("get_input_size_by_index")
get_output_size_by_index = handle_call("get_output_size_by_index")
get_input_dims = handle_call("get_input_dims")
get_output_dims = handle_call("get_output_dims")
get_cur_output_dims = handle_call("get_cur_output_dims")
get_input_data_type = handle_call("get_input_data_type")
get_output_data_type = handle_call("get_output_data_type")
get_input_format = handle_call("get_input_format")
get_output_format = handle_call("get_output_format")
get_input_name_by_index = handle_call("get_input_name_by_index")
get_output_name_by_index = handle_call("get_output_name_by_index")
get_input_index_by_name = handle_call("get_input_index_by_name")
get_output_index_by_name = handle_call("get_output_index_by_name")
create_dataset = handle_call("create_dataset")
add_dataset_buffer = handle_call("add_dataset_buffer")
get_dataset_num_buffers = handle_call("get_dataset_num_buffers")
get_dataset_buffer = handle_call("get_dataset_buffer")
destroy_dataset = handle_call("destroy_dataset")
create_exec_config_handle = handle_call("create_exec_config_handle")
set_exec_config_opt = handle_call("set_exec_config_opt")
destroy_exec_config_handle = handle_call("destroy_exec_config_handle")
get_dynamic_batch = runtime_call("get_dynamic_batch")
get_dynamic_hw = runtime_call("get_dynamic_hw")
get_input_dynamic_gear_count = runtime_call("get_input_dynamic_gear_count")
get_input_dynamic_dims = runtime_call("get_input_dynamic_dims")
set_dynamic_batch_size = runtime_call("set_dynamic_batch_size")
set_dynamic_hw_size = runtime_call("set_dynamic_hw_size")
set_input_dynamic_dims = runtime_call("set_input_dynamic_dims")

__getattr__ = module_getattr("acl.mdl")
