"""Synchronous classification in the classic pyACL sample structure (written for real Ascend
cards; runs unmodified on npufarm).

usage: python classify_sync.py MODEL.om IMAGES.npy OUT.npy [DEVICE_ID] [--from-mem]
IMAGES.npy holds a batch per model execution: [steps, N, C, H, W] float32.
"""

import sys

import numpy as np

import acl

# the constants samples define themselves
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_SUCCESS = 0
NPY_FLOAT32 = 11


def check_ret(message, ret):
    if ret != ACL_SUCCESS:
        raise Exception(f"{message} failed ret={ret}: {acl.get_recent_err_msg()}")


class Net:
    def __init__(self, device_id, model_path, from_mem=False):
        self.device_id = device_id
        ret = acl.init()
        check_ret("acl.init", ret)
        ret = acl.rt.set_device(self.device_id)
        check_ret("acl.rt.set_device", ret)
        self.context, ret = acl.rt.create_context(self.device_id)
        check_ret("acl.rt.create_context", ret)
        self.stream, ret = acl.rt.create_stream()
        check_ret("acl.rt.create_stream", ret)
        run_mode, ret = acl.rt.get_run_mode()
        check_ret("acl.rt.get_run_mode", ret)
        self.is_host = run_mode == 1  # ACL_HOST
        if from_mem:
            with open(model_path, "rb") as f:
                self.model_bytes = f.read()
            self.model_id, ret = acl.mdl.load_from_mem(
                acl.util.bytes_to_ptr(self.model_bytes), len(self.model_bytes)
            )
        else:
            self.model_id, ret = acl.mdl.load_from_file(model_path)
        check_ret("acl.mdl.load_from_file", ret)
        self.model_desc = acl.mdl.create_desc()
        ret = acl.mdl.get_desc(self.model_desc, self.model_id)
        check_ret("acl.mdl.get_desc", ret)
        self.input_dataset, self.input_buffers = self._gen_dataset("in")
        self.output_dataset, self.output_buffers = self._gen_dataset("out")
        self.output_host = []
        for i in range(acl.mdl.get_num_outputs(self.model_desc)):
            size = acl.mdl.get_output_size_by_index(self.model_desc, i)
            host, ret = acl.rt.malloc_host(size)
            check_ret("acl.rt.malloc_host", ret)
            self.output_host.append((host, size))

    def _gen_dataset(self, kind):
        dataset = acl.mdl.create_dataset()
        buffers = []
        if kind == "in":
            count = acl.mdl.get_num_inputs(self.model_desc)
            size_of = acl.mdl.get_input_size_by_index
        else:
            count = acl.mdl.get_num_outputs(self.model_desc)
            size_of = acl.mdl.get_output_size_by_index
        for i in range(count):
            size = size_of(self.model_desc, i)
            buf, ret = acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
            check_ret("acl.rt.malloc", ret)
            data = acl.create_data_buffer(buf, size)
            _, ret = acl.mdl.add_dataset_buffer(dataset, data)
            check_ret("acl.mdl.add_dataset_buffer", ret)
            buffers.append((buf, size, data))
        return dataset, buffers

    def describe(self):
        dims, ret = acl.mdl.get_input_dims(self.model_desc, 0)
        check_ret("acl.mdl.get_input_dims", ret)
        out_dims, ret = acl.mdl.get_cur_output_dims(self.model_desc, 0)
        check_ret("acl.mdl.get_cur_output_dims", ret)
        return {
            "input_name": acl.mdl.get_input_name_by_index(self.model_desc, 0),
            "input_dims": dims["dims"],
            "input_dtype": acl.mdl.get_input_data_type(self.model_desc, 0),
            "input_format": acl.mdl.get_input_format(self.model_desc, 0),
            "output_name": acl.mdl.get_output_name_by_index(self.model_desc, 0),
            "output_dims": out_dims["dims"],
            "soc": acl.rt.get_soc_name(),
        }

    def run(self, images):
        results = []
        for batch in images:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            buf, size, _ = self.input_buffers[0]
            ret = acl.rt.memcpy(
                buf, size, acl.util.numpy_to_ptr(batch), batch.nbytes, ACL_MEMCPY_HOST_TO_DEVICE
            )
            check_ret("acl.rt.memcpy", ret)
            ret = acl.mdl.execute(self.model_id, self.input_dataset, self.output_dataset)
            check_ret("acl.mdl.execute", ret)
            outputs = []
            for i in range(acl.mdl.get_dataset_num_buffers(self.output_dataset)):
                data_buf = acl.mdl.get_dataset_buffer(self.output_dataset, i)
                dev = acl.get_data_buffer_addr(data_buf)
                size = acl.get_data_buffer_size_v2(data_buf)
                host, _ = self.output_host[i]
                ret = acl.rt.memcpy(host, size, dev, size, ACL_MEMCPY_DEVICE_TO_HOST)
                check_ret("acl.rt.memcpy", ret)
                dims, ret = acl.mdl.get_output_dims(self.model_desc, i)
                outputs.append(acl.util.ptr_to_numpy(host, tuple(dims["dims"]), NPY_FLOAT32).copy())
            results.append(outputs[0])
        return np.stack(results)

    def release(self):
        for dataset, buffers in (
            (self.input_dataset, self.input_buffers),
            (self.output_dataset, self.output_buffers),
        ):
            for buf, _, data in buffers:
                acl.destroy_data_buffer(data)
                acl.rt.free(buf)
            acl.mdl.destroy_dataset(dataset)
        for host, _ in self.output_host:
            acl.rt.free_host(host)
        acl.mdl.destroy_desc(self.model_desc)
        ret = acl.mdl.unload(self.model_id)
        check_ret("acl.mdl.unload", ret)
        ret = acl.rt.destroy_stream(self.stream)
        check_ret("acl.rt.destroy_stream", ret)
        ret = acl.rt.destroy_context(self.context)
        check_ret("acl.rt.destroy_context", ret)
        ret = acl.rt.reset_device(self.device_id)
        check_ret("acl.rt.reset_device", ret)
        ret = acl.finalize()
        check_ret("acl.finalize", ret)


def main():
    model_path, images_path, out_path = sys.argv[1:4]
    device_id = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4].isdigit() else 0
    net = Net(device_id, model_path, from_mem="--from-mem" in sys.argv)
    print("model:", net.describe())
    probs = net.run(np.load(images_path))
    net.release()
    np.save(out_path, probs)
    print("top-1:", probs.reshape(-1, probs.shape[-1]).argmax(axis=1).tolist())


if __name__ == "__main__":
    main()
