/*
 * device_threads: one pthread per device, each in a context of its own.
 *
 *   device_threads ADD_MODEL RUNS
 *
 * The main thread creates one context per device (aclrtCreateContext) and hands each to a
 * thread, which makes it current (aclrtSetCurrentContext), checks aclrtGetDevice, creates a
 * stream, loads the model and runs it RUNS times with inputs of its own (x = 1000 * device +
 * run + i / 2), syncing and checking every output. All threads run at once.
 */
#include <pthread.h>

#include "common.h"

typedef struct {
    int32_t device;
    aclrtContext context;
    const char *model;
    int runs;
    int32_t seen_device;
    size_t correct, total;
    aclError failed; /* the first failing call's code, 0 if none */
} Worker;

static void *work(void *arg)
{
    Worker *worker = arg;
    aclrtStream stream;
    AddModel add;
    int run;
    CHECK(aclrtSetCurrentContext(worker->context));
    CHECK(aclrtGetDevice(&worker->seen_device));
    CHECK(aclrtCreateStream(&stream));
    add_load(&add, worker->model);
    for (run = 0; run < worker->runs; ++run) {
        aclError code;
        add_fill(&add, 1000.0f * (float)worker->device + (float)run);
        code = aclmdlExecuteAsync(add.model, add.inputs, add.outputs, stream);
        if (code == ACL_SUCCESS)
            code = aclrtSynchronizeStream(stream);
        if (code != ACL_SUCCESS && worker->failed == ACL_SUCCESS)
            worker->failed = code;
        worker->correct += add_read(&add);
        worker->total += add.count;
    }
    add_release(&add);
    CHECK(aclrtDestroyStream(stream));
    return NULL;
}

int main(int argc, char *argv[])
{
    uint32_t count, d;
    Worker *workers;
    pthread_t *threads;
    int status = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADD_MODEL RUNS\n", argv[0]);
        return 2;
    }
    CHECK(aclInit(NULL));
    CHECK(aclrtGetDeviceCount(&count));
    printf("devices: %u\n", count);
    workers = calloc(count, sizeof *workers);
    threads = calloc(count, sizeof *threads);
    for (d = 0; d < count; ++d) {
        workers[d].device = (int32_t)d;
        workers[d].model = argv[1];
        workers[d].runs = atoi(argv[2]);
        workers[d].seen_device = -1;
        CHECK(aclrtCreateContext(&workers[d].context, (int32_t)d));
    }
    for (d = 0; d < count; ++d)
        if (pthread_create(&threads[d], NULL, work, &workers[d]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    for (d = 0; d < count; ++d) {
        Worker *w = &workers[d];
        pthread_join(threads[d], NULL);
        printf("device %d: current device %d, code %d, correct=%zu of %zu\n", (int)w->device,
               (int)w->seen_device, (int)w->failed, w->correct, w->total);
        if (w->seen_device != w->device || w->failed != 0 || w->correct != w->total)
            status = 1;
    }
    for (d = 0; d < count; ++d) {
        CHECK(aclrtDestroyContext(workers[d].context));
        CHECK(aclrtResetDevice((int32_t)d));
    }
    CHECK(aclFinalize());
    free(workers);
    free(threads);
    printf("done\n");
    return status;
}
