/*
 * The C half of benchmarks/cabi.py: AscendCL timings of a plain C program linked with
 * -lascendcl, printed as one JSON object on stdout. benchmarks/cabi_pyside.py is its pyACL twin:
 * same calls, same order, same warm-up, same JSON, so the driver reduces both alike.
 *
 *   cabi_bench MODEL COPY_ITERS EXEC_ITERS WARMUP REPEATS BIG_BYTES
 *
 *   memcpy_small_h2d_s  one 4 KiB aclrtMemcpy host -> device per sample (COPY_ITERS samples)
 *   exec_sync_s         aclmdlExecuteAsync + aclrtSynchronizeStream on MODEL (EXEC_ITERS samples)
 *   memcpy_big_h2d_s    BIG_BYTES host -> device, INNER copies per sample (REPEATS samples)
 *   memcpy_big_d2h_s    the same, device -> host
 *
 * Every loop runs WARMUP untimed iterations first (one untimed big copy each way). Times are
 * CLOCK_MONOTONIC seconds, the clock Python's time.perf_counter reads.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acl/acl.h"

#define SMALL_BYTES 4096
#define MIB (1024UL * 1024UL)

#define CHECK(call)                                                     \
    do {                                                                \
        aclError check_ret_ = (call);                                   \
        if (check_ret_ != ACL_SUCCESS) {                                \
            fprintf(stderr, "%s failed: %d\n", #call, (int)check_ret_); \
            exit(1);                                                    \
        }                                                               \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void print_samples(const char *key, const double *samples, long count, int last)
{
    long i;
    printf("\"%s\": [", key);
    for (i = 0; i < count; ++i)
        printf("%s%.9f", i ? ", " : "", samples[i]);
    printf("]%s\n", last ? "" : ",");
}

static void *host_buffer(size_t size, int fill)
{
    void *buffer = malloc(size);
    if (buffer == NULL) {
        fprintf(stderr, "malloc(%zu) failed\n", size);
        exit(1);
    }
    memset(buffer, fill, size); /* resident pages, as the Python side's numpy arrays */
    return buffer;
}

static aclmdlDataset *dataset_of(void *device, size_t size)
{
    aclmdlDataset *dataset = aclmdlCreateDataset();
    CHECK(aclmdlAddDatasetBuffer(dataset, aclCreateDataBuffer(device, size)));
    return dataset;
}

static void destroy_dataset(aclmdlDataset *dataset)
{
    CHECK(aclDestroyDataBuffer(aclmdlGetDatasetBuffer(dataset, 0)));
    CHECK(aclmdlDestroyDataset(dataset));
}

static void time_small_copies(double *out, long iters, long warmup)
{
    void *device, *host = host_buffer(SMALL_BYTES, 0x5A);
    long i;
    CHECK(aclrtMalloc(&device, SMALL_BYTES, ACL_MEM_MALLOC_HUGE_FIRST));
    for (i = -warmup; i < iters; ++i) {
        double t = now_s();
        CHECK(aclrtMemcpy(device, SMALL_BYTES, host, SMALL_BYTES, ACL_MEMCPY_HOST_TO_DEVICE));
        if (i >= 0)
            out[i] = now_s() - t;
    }
    CHECK(aclrtFree(device));
    free(host);
}

static void time_exec_sync(double *out, long iters, long warmup, const char *model_path)
{
    aclrtStream stream;
    aclmdlDesc *desc = aclmdlCreateDesc();
    aclmdlDataset *inputs, *outputs;
    void *in_device, *out_device;
    size_t in_size, out_size;
    uint32_t model;
    long i;
    CHECK(aclrtCreateStream(&stream));
    CHECK(aclmdlLoadFromFile(model_path, &model));
    CHECK(aclmdlGetDesc(desc, model));
    in_size = aclmdlGetInputSizeByIndex(desc, 0);
    out_size = aclmdlGetOutputSizeByIndex(desc, 0);
    CHECK(aclrtMalloc(&in_device, in_size, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&out_device, out_size, ACL_MEM_MALLOC_HUGE_FIRST));
    inputs = dataset_of(in_device, in_size);
    outputs = dataset_of(out_device, out_size);
    for (i = -warmup; i < iters; ++i) {
        double t = now_s();
        CHECK(aclmdlExecuteAsync(model, inputs, outputs, stream));
        CHECK(aclrtSynchronizeStream(stream));
        if (i >= 0)
            out[i] = now_s() - t;
    }
    destroy_dataset(inputs);
    destroy_dataset(outputs);
    CHECK(aclrtFree(in_device));
    CHECK(aclrtFree(out_device));
    CHECK(aclmdlDestroyDesc(desc));
    CHECK(aclmdlUnload(model));
    CHECK(aclrtDestroyStream(stream));
}

static void time_big_copies(double *h2d, double *d2h, long repeats, long inner, size_t size)
{
    unsigned char *src = host_buffer(size, 0x5A), *dst = host_buffer(size, 1);
    void *device;
    long r, i;
    double t;
    CHECK(aclrtMalloc(&device, size, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMemcpy(device, size, src, size, ACL_MEMCPY_HOST_TO_DEVICE));
    CHECK(aclrtMemcpy(dst, size, device, size, ACL_MEMCPY_DEVICE_TO_HOST));
    if (dst[0] != 0x5A || dst[size - 1] != 0x5A) {
        fprintf(stderr, "memcpy round trip returned the wrong bytes\n");
        exit(1);
    }
    for (r = 0; r < repeats; ++r) {
        t = now_s();
        for (i = 0; i < inner; ++i)
            CHECK(aclrtMemcpy(device, size, src, size, ACL_MEMCPY_HOST_TO_DEVICE));
        h2d[r] = now_s() - t;
        t = now_s();
        for (i = 0; i < inner; ++i)
            CHECK(aclrtMemcpy(dst, size, device, size, ACL_MEMCPY_DEVICE_TO_HOST));
        d2h[r] = now_s() - t;
    }
    CHECK(aclrtFree(device));
    free(src);
    free(dst);
}

int main(int argc, char *argv[])
{
    long copy_iters, exec_iters, warmup, repeats, inner;
    size_t big;
    double *small, *exec, *h2d, *d2h;
    aclrtContext context;
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL COPY_ITERS EXEC_ITERS WARMUP REPEATS BIG_BYTES\n", argv[0]);
        return 2;
    }
    copy_iters = atol(argv[2]);
    exec_iters = atol(argv[3]);
    warmup = atol(argv[4]);
    repeats = atol(argv[5]);
    big = (size_t)atol(argv[6]);
    if (copy_iters < 1 || exec_iters < 1 || warmup < 0 || repeats < 1 || big < 1) {
        fprintf(stderr, "counts must be >= 1 (WARMUP >= 0)\n");
        return 2;
    }
    /* small copies repeated inside one sample, as benchmarks/raw.py's raw_copy_rate */
    inner = (long)(64 * MIB / big);
    inner = inner < 1 ? 1 : (inner > 64 ? 64 : inner);
    small = calloc((size_t)copy_iters, sizeof *small);
    exec = calloc((size_t)exec_iters, sizeof *exec);
    h2d = calloc((size_t)repeats, sizeof *h2d);
    d2h = calloc((size_t)repeats, sizeof *d2h);
    if (!small || !exec || !h2d || !d2h) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtCreateContext(&context, 0));
    time_small_copies(small, copy_iters, warmup);
    time_exec_sync(exec, exec_iters, warmup, argv[1]);
    time_big_copies(h2d, d2h, repeats, inner, big);
    CHECK(aclrtDestroyContext(context));
    CHECK(aclrtResetDevice(0));
    CHECK(aclFinalize());

    printf("{\"side\": \"c\", \"small_bytes\": %d, \"big_bytes\": %zu, \"inner\": %ld,\n",
           SMALL_BYTES, big, inner);
    print_samples("memcpy_small_h2d_s", small, copy_iters, 0);
    print_samples("exec_sync_s", exec, exec_iters, 0);
    print_samples("memcpy_big_h2d_s", h2d, repeats, 0);
    print_samples("memcpy_big_d2h_s", d2h, repeats, 1);
    printf("}\n");
    free(small);
    free(exec);
    free(h2d);
    free(d2h);
    return 0;
}
