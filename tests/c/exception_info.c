/*
 * exception_info: an exception-info callback on a failing device task.
 *
 *   exception_info FAILING_MODEL DEVICE
 *
 * FAILING_MODEL is an add model whose executions fail on the device (a fault plan). The
 * program registers a callback with aclrtSetExceptionInfoCallback, runs the model once and
 * syncs (the task's error comes back there); the callback reads the failed task's device,
 * error code, stream, task and thread with the aclrtGet*FromExceptionInfo getters.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common.h"

/* CANN marks aclrtSetExceptionInfoCallback deprecated; programs still use it everywhere */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int calls;
static uint32_t device_id, error_code, stream_id, task_id, thread_id;

static void on_exception(aclrtExceptionInfo *info)
{
    pthread_mutex_lock(&lock);
    if (calls++ == 0) {
        device_id = aclrtGetDeviceIdFromExceptionInfo(info);
        error_code = aclrtGetErrorCodeFromExceptionInfo(info);
        stream_id = aclrtGetStreamIdFromExceptionInfo(info);
        task_id = aclrtGetTaskIdFromExceptionInfo(info);
        thread_id = aclrtGetThreadIdFromExceptionInfo(info);
    }
    pthread_mutex_unlock(&lock);
}

int main(int argc, char *argv[])
{
    int32_t device;
    aclrtStream stream;
    AddModel add;
    aclError synced;
    double started_ms;
    int seen = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: %s FAILING_MODEL DEVICE\n", argv[0]);
        return 2;
    }
    device = atoi(argv[2]);
    CHECK(aclInit(NULL));
    CHECK(aclrtSetExceptionInfoCallback(on_exception));
    CHECK(aclrtSetDevice(device));
    CHECK(aclrtCreateStream(&stream));
    add_load(&add, argv[1]);
    add_fill(&add, 0.0f);
    CHECK(aclmdlExecuteAsync(add.model, add.inputs, add.outputs, stream));
    synced = aclrtSynchronizeStream(stream);
    printf("aclrtSynchronizeStream -> %d\n", (int)synced);
    started_ms = now_ms();
    while (!seen && now_ms() - started_ms < 10000.0) { /* the callback runs on its own thread */
        pthread_mutex_lock(&lock);
        seen = calls;
        pthread_mutex_unlock(&lock);
        if (!seen)
            usleep(10000);
    }
    pthread_mutex_lock(&lock);
    printf("callback calls: %d\n", calls);
    printf("device id: %u\n", device_id);
    printf("error code: %u\n", error_code);
    printf("stream id matches: %s\n",
           stream_id == (uint32_t)(uintptr_t)stream ? "yes" : "no");
    printf("task id valid: %s\n", task_id != 0xFFFFFFFFu ? "yes" : "no");
    printf("thread id is the submitter's: %s\n",
           thread_id == (uint32_t)syscall(SYS_gettid) ? "yes" : "no");
    pthread_mutex_unlock(&lock);
    printf("aclrtGetDeviceIdFromExceptionInfo(NULL) -> %u\n",
           aclrtGetDeviceIdFromExceptionInfo(NULL));
    CHECK(aclrtSetExceptionInfoCallback(NULL));
    add_release(&add);
    CHECK(aclrtDestroyStream(stream));
    CHECK(aclrtResetDevice(device));
    CHECK(aclFinalize());
    printf("done\n");
    return 0;
}
