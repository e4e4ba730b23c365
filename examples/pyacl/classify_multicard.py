"""Multi-card classification, one thread per device, in the pyACL sample structure: the main
thread opens every device and its context; each worker thread binds its context with
``acl.rt.set_context`` and runs its share of the images with execute_async + synchronize_stream.

usage: python classify_multicard.py MODEL.om IMAGES.npy OUT.npy
IMAGES.npy: [steps, N, C, H, W] float32; request k runs on device k % device_count.
"""

import sys
import threading

import numpy as np

import acl

ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_SUCCESS = 0


def check_ret(message, ret):
    if ret != ACL_SUCCESS:
        raise Exception(f"{message} failed ret={ret}: {acl.get_recent_err_msg()}")


def worker(device_id, context, model_path, images, indices, results, errors):
    try:
        check_ret("acl.rt.set_context", acl.rt.set_context(context))
        stream, ret = acl.rt.create_stream()
        check_ret("acl.rt.create_stream", ret)
        model_id, ret = acl.mdl.load_from_file(model_path)
        check_ret("acl.mdl.load_from_file", ret)
        desc = acl.mdl.create_desc()
        check_ret("acl.mdl.get_desc", acl.mdl.get_desc(desc, model_id))
        in_size = acl.mdl.get_input_size_by_index(desc, 0)
        out_size = acl.mdl.get_output_size_by_index(desc, 0)
        dims, ret = acl.mdl.get_output_dims(desc, 0)
        check_ret("acl.mdl.get_output_dims", ret)
        in_dev, ret = acl.rt.malloc(in_size, ACL_MEM_MALLOC_HUGE_FIRST)
        check_ret("acl.rt.malloc", ret)
        out_dev, ret = acl.rt.malloc(out_size, ACL_MEM_MALLOC_HUGE_FIRST)
        check_ret("acl.rt.malloc", ret)
        inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        in_buf = acl.create_data_buffer(in_dev, in_size)
        out_buf = acl.create_data_buffer(out_dev, out_size)
        acl.mdl.add_dataset_buffer(inputs, in_buf)
        acl.mdl.add_dataset_buffer(outputs, out_buf)
        out_host = np.empty(dims["dims"], np.float32)
        for index in indices:
            batch = np.ascontiguousarray(images[index], dtype=np.float32)
            check_ret(
                "acl.rt.memcpy",
                acl.rt.memcpy(
                    in_dev,
                    in_size,
                    acl.util.numpy_to_ptr(batch),
                    batch.nbytes,
                    ACL_MEMCPY_HOST_TO_DEVICE,
                ),
            )
            check_ret(
                "acl.mdl.execute_async", acl.mdl.execute_async(model_id, inputs, outputs, stream)
            )
            check_ret("acl.rt.synchronize_stream", acl.rt.synchronize_stream(stream))
            check_ret(
                "acl.rt.memcpy",
                acl.rt.memcpy(
                    acl.util.numpy_to_ptr(out_host),
                    out_size,
                    out_dev,
                    out_size,
                    ACL_MEMCPY_DEVICE_TO_HOST,
                ),
            )
            results[index] = (device_id, out_host.copy())
        acl.destroy_data_buffer(in_buf)
        acl.destroy_data_buffer(out_buf)
        acl.mdl.destroy_dataset(inputs)
        acl.mdl.destroy_dataset(outputs)
        acl.rt.free(in_dev)
        acl.rt.free(out_dev)
        acl.mdl.destroy_desc(desc)
        check_ret("acl.mdl.unload", acl.mdl.unload(model_id))
        check_ret("acl.rt.destroy_stream", acl.rt.destroy_stream(stream))
    except Exception as exc:
        errors.append(f"device {device_id}: {exc}")


def main():
    model_path, images_path, out_path = sys.argv[1:4]
    images = np.load(images_path)
    check_ret("acl.init", acl.init())
    count, ret = acl.rt.get_device_count()
    check_ret("acl.rt.get_device_count", ret)
    contexts = []
    for device_id in range(count):
        check_ret("acl.rt.set_device", acl.rt.set_device(device_id))
        context, ret = acl.rt.create_context(device_id)
        check_ret("acl.rt.create_context", ret)
        contexts.append(context)
    results, errors = {}, []
    threads = [
        threading.Thread(
            target=worker,
            args=(
                d,
                contexts[d],
                model_path,
                images,
                range(d, len(images), count),
                results,
                errors,
            ),
        )
        for d in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for device_id, context in enumerate(contexts):
        check_ret("acl.rt.destroy_context", acl.rt.destroy_context(context))
        check_ret("acl.rt.reset_device", acl.rt.reset_device(device_id))
    check_ret("acl.finalize", acl.finalize())
    if errors:
        raise SystemExit("; ".join(errors))
    np.save(out_path, np.stack([results[i][1] for i in range(len(images))]))
    used = sorted({results[i][0] for i in range(len(images))})
    print(f"{len(images)} requests on devices {used}")


if __name__ == "__main__":
    main()
