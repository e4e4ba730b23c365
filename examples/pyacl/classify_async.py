"""Asynchronous classification on several streams with host callbacks and events, in the
pyACL sample structure (a report thread per stream runs the callbacks that fetch results).

usage: python classify_async.py MODEL.om IMAGES.npy OUT.npy [STREAMS]
IMAGES.npy: [steps, N, C, H, W] float32; request k runs on stream k % STREAMS.
"""

import sys

import numpy as np

import acl

ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_CALLBACK_BLOCK = 1
ACL_SUCCESS = 0
NPY_FLOAT32 = 11


def check_ret(message, ret):
    if ret != ACL_SUCCESS:
        raise Exception(f"{message} failed ret={ret}: {acl.get_recent_err_msg()}")


class AsyncNet:
    def __init__(self, device_id, model_path, streams):
        self.device_id = device_id
        self.callback_run_flag = True
        check_ret("acl.init", acl.init())
        check_ret("acl.rt.set_device", acl.rt.set_device(device_id))
        self.context, ret = acl.rt.create_context(device_id)
        check_ret("acl.rt.create_context", ret)
        self.streams, self.models, self.threads = [], [], []
        for _ in range(streams):
            stream, ret = acl.rt.create_stream()
            check_ret("acl.rt.create_stream", ret)
            # one loaded copy per stream: a model id must not run on two streams at once
            model_id, ret = acl.mdl.load_from_file(model_path)
            check_ret("acl.mdl.load_from_file", ret)
            tid, ret = acl.util.start_thread(self._process_callback, [self.context, 50])
            check_ret("acl.util.start_thread", ret)
            check_ret("acl.rt.subscribe_report", acl.rt.subscribe_report(tid, stream))
            self.streams.append(stream)
            self.models.append(model_id)
            self.threads.append(tid)
        self.model_desc = acl.mdl.create_desc()
        check_ret("acl.mdl.get_desc", acl.mdl.get_desc(self.model_desc, self.models[0]))
        self.in_size = acl.mdl.get_input_size_by_index(self.model_desc, 0)
        self.out_size = acl.mdl.get_output_size_by_index(self.model_desc, 0)
        dims, ret = acl.mdl.get_output_dims(self.model_desc, 0)
        check_ret("acl.mdl.get_output_dims", ret)
        self.out_shape = tuple(dims["dims"])
        self.results = {}
        self.requests = []

    def _process_callback(self, args_list):
        context, timeout = args_list
        acl.rt.set_context(context)
        while self.callback_run_flag:
            acl.rt.process_report(timeout)  # 507012 on an idle timeout: just poll again

    def _callback(self, user_data):
        index, out_dev, host = user_data
        ret = acl.rt.memcpy(host, self.out_size, out_dev, self.out_size, ACL_MEMCPY_DEVICE_TO_HOST)
        check_ret("acl.rt.memcpy in callback", ret)
        self.results[index] = acl.util.ptr_to_numpy(host, self.out_shape, NPY_FLOAT32).copy()

    def _request_buffers(self):
        in_dev, ret = acl.rt.malloc(self.in_size, ACL_MEM_MALLOC_HUGE_FIRST)
        check_ret("acl.rt.malloc", ret)
        out_dev, ret = acl.rt.malloc(self.out_size, ACL_MEM_MALLOC_HUGE_FIRST)
        check_ret("acl.rt.malloc", ret)
        host, ret = acl.rt.malloc_host(self.out_size)
        check_ret("acl.rt.malloc_host", ret)
        inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        in_buf = acl.create_data_buffer(in_dev, self.in_size)
        out_buf = acl.create_data_buffer(out_dev, self.out_size)
        acl.mdl.add_dataset_buffer(inputs, in_buf)
        acl.mdl.add_dataset_buffer(outputs, out_buf)
        return in_dev, out_dev, host, inputs, outputs, in_buf, out_buf

    def run(self, images):
        start_event, ret = acl.rt.create_event()
        check_ret("acl.rt.create_event", ret)
        end_event, ret = acl.rt.create_event()
        check_ret("acl.rt.create_event", ret)
        check_ret("acl.rt.record_event", acl.rt.record_event(start_event, self.streams[0]))
        for index, batch in enumerate(images):
            slot = index % len(self.streams)
            stream, model_id = self.streams[slot], self.models[slot]
            request = self._request_buffers()
            in_dev, out_dev, host, inputs, outputs = request[:5]
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            ret = acl.rt.memcpy(
                in_dev,
                self.in_size,
                acl.util.numpy_to_ptr(batch),
                batch.nbytes,
                ACL_MEMCPY_HOST_TO_DEVICE,
            )
            check_ret("acl.rt.memcpy", ret)
            check_ret(
                "acl.mdl.execute_async", acl.mdl.execute_async(model_id, inputs, outputs, stream)
            )
            check_ret(
                "acl.rt.launch_callback",
                acl.rt.launch_callback(
                    self._callback, (index, out_dev, host), ACL_CALLBACK_BLOCK, stream
                ),
            )
            self.requests.append(request)
        # the first stream's end event waits for the work of every other stream
        for stream in self.streams[1:]:
            event, ret = acl.rt.create_event()
            check_ret("acl.rt.create_event", ret)
            check_ret("acl.rt.record_event", acl.rt.record_event(event, stream))
            check_ret("acl.rt.stream_wait_event", acl.rt.stream_wait_event(self.streams[0], event))
            self.requests.append(("event", event))
        check_ret("acl.rt.record_event", acl.rt.record_event(end_event, self.streams[0]))
        check_ret("acl.rt.synchronize_event", acl.rt.synchronize_event(end_event))
        status, ret = acl.rt.query_event_status(end_event)
        check_ret("acl.rt.query_event_status", ret)
        for stream in self.streams:
            check_ret("acl.rt.synchronize_stream", acl.rt.synchronize_stream(stream))
        acl.rt.destroy_event(start_event)
        acl.rt.destroy_event(end_event)
        return np.stack([self.results[i] for i in range(len(images))]), status

    def release(self):
        for stream, tid in zip(self.streams, self.threads):
            check_ret("acl.rt.unsubscribe_report", acl.rt.unsubscribe_report(tid, stream))
        self.callback_run_flag = False
        for tid in self.threads:
            check_ret("acl.util.stop_thread", acl.util.stop_thread(tid))
        for request in self.requests:
            if request[0] == "event":
                acl.rt.destroy_event(request[1])
                continue
            in_dev, out_dev, host, inputs, outputs, in_buf, out_buf = request
            acl.destroy_data_buffer(in_buf)
            acl.destroy_data_buffer(out_buf)
            acl.mdl.destroy_dataset(inputs)
            acl.mdl.destroy_dataset(outputs)
            acl.rt.free(in_dev)
            acl.rt.free(out_dev)
            acl.rt.free_host(host)
        acl.mdl.destroy_desc(self.model_desc)
        for model_id in self.models:
            check_ret("acl.mdl.unload", acl.mdl.unload(model_id))
        for stream in self.streams:
            check_ret("acl.rt.destroy_stream", acl.rt.destroy_stream(stream))
        check_ret("acl.rt.destroy_context", acl.rt.destroy_context(self.context))
        check_ret("acl.rt.reset_device", acl.rt.reset_device(self.device_id))
        check_ret("acl.finalize", acl.finalize())


def main():
    model_path, images_path, out_path = sys.argv[1:4]
    streams = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    net = AsyncNet(0, model_path, streams)
    probs, status = net.run(np.load(images_path))
    net.release()
    np.save(out_path, probs)
    print(f"{len(probs)} requests on {streams} streams; end event status {status}")


if __name__ == "__main__":
    main()
