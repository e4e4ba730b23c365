/*
 * pitfalls: the mistakes the farm exists to catch, each a few lines of ordinary AscendCL C.
 *
 *   main skip-sync    MODEL DEVICE   read an output before synchronizing the stream
 *   main hang-timeout MODEL DEVICE   a timed sync on a task that never ends (a hang fault)
 *   main no-finalize  MODEL DEVICE   exit with memory held and without aclFinalize
 *
 * MODEL adds two float32 inputs of the same size (z = x + y).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl/acl.h"

#define CHECK(call)                                                     \
    do {                                                                \
        aclError check_ret_ = (call);                                   \
        if (check_ret_ != ACL_SUCCESS) {                                \
            fprintf(stderr, "%s failed: %d\n", #call, (int)check_ret_); \
            exit(1);                                                    \
        }                                                               \
    } while (0)

typedef struct {
    int32_t device;
    aclrtStream stream;
    uint32_t model;
    aclmdlDesc *desc;
    aclmdlDataset *inputs, *outputs;
    void *x, *y, *z;
    size_t size, count;
    float *host_x, *host_y, *host_z;
} Run;

static aclmdlDataset *dataset_of(void *first, void *second, size_t size)
{
    aclmdlDataset *dataset = aclmdlCreateDataset();
    CHECK(aclmdlAddDatasetBuffer(dataset, aclCreateDataBuffer(first, size)));
    if (second != NULL)
        CHECK(aclmdlAddDatasetBuffer(dataset, aclCreateDataBuffer(second, size)));
    return dataset;
}

/* init, device, stream, model, x and y on the device, z filled with 7.0 */
static void set_up(Run *run, const char *model, int32_t device)
{
    size_t i;
    memset(run, 0, sizeof *run);
    run->device = device;
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(device));
    CHECK(aclrtCreateStream(&run->stream));
    CHECK(aclmdlLoadFromFile(model, &run->model));
    run->desc = aclmdlCreateDesc();
    CHECK(aclmdlGetDesc(run->desc, run->model));
    run->size = aclmdlGetInputSizeByIndex(run->desc, 0);
    run->count = run->size / sizeof(float);
    run->host_x = malloc(run->size);
    run->host_y = malloc(run->size);
    run->host_z = malloc(run->size);
    for (i = 0; i < run->count; ++i) {
        run->host_x[i] = (float)i * 0.5f;
        run->host_y[i] = 1.0f;
        run->host_z[i] = 7.0f;
    }
    CHECK(aclrtMalloc(&run->x, run->size, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&run->y, run->size, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&run->z, run->size, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMemcpy(run->x, run->size, run->host_x, run->size, ACL_MEMCPY_HOST_TO_DEVICE));
    CHECK(aclrtMemcpy(run->y, run->size, run->host_y, run->size, ACL_MEMCPY_HOST_TO_DEVICE));
    CHECK(aclrtMemcpy(run->z, run->size, run->host_z, run->size, ACL_MEMCPY_HOST_TO_DEVICE));
    run->inputs = dataset_of(run->x, run->y, run->size);
    run->outputs = dataset_of(run->z, NULL, run->size);
}

static void tear_down(Run *run)
{
    size_t i;
    for (i = 0; i < aclmdlGetDatasetNumBuffers(run->inputs); ++i)
        CHECK(aclDestroyDataBuffer(aclmdlGetDatasetBuffer(run->inputs, i)));
    CHECK(aclDestroyDataBuffer(aclmdlGetDatasetBuffer(run->outputs, 0)));
    CHECK(aclmdlDestroyDataset(run->inputs));
    CHECK(aclmdlDestroyDataset(run->outputs));
    CHECK(aclrtFree(run->x));
    CHECK(aclrtFree(run->y));
    CHECK(aclrtFree(run->z));
    CHECK(aclmdlDestroyDesc(run->desc));
    CHECK(aclmdlUnload(run->model));
    CHECK(aclrtDestroyStream(run->stream));
    CHECK(aclrtResetDevice(run->device));
    CHECK(aclFinalize());
    free(run->host_x);
    free(run->host_y);
    free(run->host_z);
}

static void read_z(Run *run)
{
    CHECK(aclrtMemcpy(run->host_z, run->size, run->z, run->size, ACL_MEMCPY_DEVICE_TO_HOST));
}

static int skip_sync(Run *run)
{
    size_t i, nan = 0, stale = 0, correct = 0;
    CHECK(aclmdlExecuteAsync(run->model, run->inputs, run->outputs, run->stream));
    read_z(run); /* the bug: the task may still be running */
    for (i = 0; i < run->count; ++i) {
        nan += isnan(run->host_z[i]) ? 1 : 0;
        stale += run->host_z[i] == 7.0f ? 1 : 0;
    }
    printf("unsynced read: nan=%zu stale=%zu of %zu\n", nan, stale, run->count);
    CHECK(aclrtSynchronizeStream(run->stream));
    read_z(run);
    for (i = 0; i < run->count; ++i)
        correct += run->host_z[i] == run->host_x[i] + run->host_y[i] ? 1 : 0;
    printf("synced read: correct=%zu of %zu\n", correct, run->count);
    return correct == run->count ? 0 : 1;
}

static int hang_timeout(Run *run)
{
    aclError timed, waited;
    CHECK(aclmdlExecuteAsync(run->model, run->inputs, run->outputs, run->stream));
    timed = aclrtSynchronizeStreamWithTimeout(run->stream, 300);
    printf("aclrtSynchronizeStreamWithTimeout(300 ms) -> %d\n", (int)timed);
    waited = aclrtSynchronizeStream(run->stream); /* until the device watchdog ends the task */
    printf("aclrtSynchronizeStream -> %d\n", (int)waited);
    printf("aclrtSynchronizeStream again -> %d\n", (int)aclrtSynchronizeStream(run->stream));
    return timed == ACL_ERROR_RT_STREAM_SYNC_TIMEOUT ? 0 : 1;
}

static int no_finalize(Run *run)
{
    void *pinned = NULL;
    CHECK(aclrtMallocHost(&pinned, 1 << 16));
    CHECK(aclrtMemcpyAsync(run->z, run->size, pinned, run->size, ACL_MEMCPY_HOST_TO_DEVICE, run->stream));
    CHECK(aclrtSynchronizeStream(run->stream));
    printf("leaving without aclFinalize\n");
    return 0; /* device memory, pinned memory, the stream and the session still held */
}

int main(int argc, char *argv[])
{
    Run run;
    int status;
    if (argc != 4) {
        fprintf(stderr, "usage: %s skip-sync|hang-timeout|no-finalize MODEL DEVICE\n", argv[0]);
        return 2;
    }
    set_up(&run, argv[2], atoi(argv[3]));
    if (strcmp(argv[1], "skip-sync") == 0) {
        status = skip_sync(&run);
    } else if (strcmp(argv[1], "hang-timeout") == 0) {
        status = hang_timeout(&run);
    } else if (strcmp(argv[1], "no-finalize") == 0) {
        return no_finalize(&run);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    tear_down(&run);
    return status;
}
