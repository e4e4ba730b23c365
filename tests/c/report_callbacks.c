/*
 * report_callbacks: host callbacks on a report thread, as the vendor samples write them.
 *
 *   report_callbacks ADD_MODEL DEVICE RUNS [shared]
 *
 * A report pthread makes the main thread's context current, subscribes itself to the stream
 * (aclrtSubscribeReport with its pthread_self()) and calls aclrtProcessReport in a loop. The
 * main thread queues, per run, the input copy (aclrtMemcpyAsync from aclrtMallocHost memory),
 * the execution and a blocking callback (aclrtLaunchCallback, ACL_CALLBACK_BLOCK) that copies
 * the output back with aclrtMemcpy inside the callback and checks it. Prints, per run, whether
 * the callback ran on the report thread, the copy's code and how many elements were right.
 *
 * Each run has its own device buffers. With "shared" every run writes one output buffer: the
 * main thread queues a run once the previous run's callback has started, and the callback
 * reads only after that: the new run's tasks are held behind the blocking callback, so the
 * callback still reads its own run's output (as on the device, where they have not started).
 */
#include <pthread.h>
#include <unistd.h>

#include "common.h"

#define MAX_RUNS 8

typedef struct {
    AddModel *add;
    int run;
    float *x;                /* this run's pinned input */
    void *dev_x, *dev_z;     /* this run's device input and output */
    aclmdlDataset *inputs, *outputs;
    float *z;                /* where the callback copies the output */
    pthread_t ran_on;
    aclError copy_code;
    size_t correct;
    int done;
} Slot;

static aclrtContext context;
static aclrtStream stream;
static pthread_t report_thread;
static volatile int subscribed, stop_reports, queued_runs, started_runs;
static int runs, shared;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void on_done(void *user_data)
{
    Slot *slot = user_data;
    size_t i, correct = 0;
    int next = slot->run + 2 < runs ? slot->run + 2 : runs; /* runs queued with the next one */
    double started_ms = now_ms();
    slot->ran_on = pthread_self();
    __atomic_store_n(&started_runs, slot->run + 1, __ATOMIC_SEQ_CST);
    while (shared && __atomic_load_n(&queued_runs, __ATOMIC_SEQ_CST) < next &&
           now_ms() - started_ms < 5000.0)
        usleep(1000); /* let the next run be queued (and held) before reading */
    slot->copy_code = aclrtMemcpy(slot->z, slot->add->size, slot->dev_z, slot->add->size,
                                  ACL_MEMCPY_DEVICE_TO_HOST);
    for (i = 0; i < slot->add->count; ++i)
        correct += slot->z[i] == slot->x[i] + slot->add->host_y[i] ? 1 : 0;
    pthread_mutex_lock(&lock);
    slot->correct = correct;
    slot->done = 1;
    pthread_mutex_unlock(&lock);
}

static void *report_loop(void *arg)
{
    (void)arg;
    CHECK(aclrtSetCurrentContext(context));
    CHECK(aclrtSubscribeReport((uint64_t)pthread_self(), stream));
    __atomic_store_n(&subscribed, 1, __ATOMIC_SEQ_CST);
    while (!__atomic_load_n(&stop_reports, __ATOMIC_SEQ_CST)) {
        aclError code = aclrtProcessReport(100);
        if (code != ACL_SUCCESS && code != ACL_ERROR_RT_REPORT_TIMEOUT) {
            fprintf(stderr, "aclrtProcessReport -> %d\n", (int)code);
            exit(1);
        }
    }
    return NULL;
}

static void queue_run(Slot *slot, AddModel *add, int run)
{
    size_t i;
    slot->add = add;
    slot->run = run;
    CHECK(aclrtMallocHost((void **)&slot->x, add->size));
    slot->z = malloc(add->size);
    for (i = 0; i < add->count; ++i)
        slot->x[i] = 100.0f * (float)run + (float)i;
    if (shared) {
        slot->dev_x = add->x;
        slot->dev_z = add->z;
        slot->inputs = add->inputs;
        slot->outputs = add->outputs;
    } else {
        CHECK(aclrtMalloc(&slot->dev_x, add->size, ACL_MEM_MALLOC_HUGE_FIRST));
        CHECK(aclrtMalloc(&slot->dev_z, add->size, ACL_MEM_MALLOC_HUGE_FIRST));
        slot->inputs = dataset_of(slot->dev_x, add->y, add->size);
        slot->outputs = dataset_of(slot->dev_z, NULL, add->size);
    }
    CHECK(aclrtMemcpyAsync(slot->dev_x, add->size, slot->x, add->size,
                           ACL_MEMCPY_HOST_TO_DEVICE, stream));
    CHECK(aclmdlExecuteAsync(add->model, slot->inputs, slot->outputs, stream));
    CHECK(aclrtLaunchCallback(on_done, slot, ACL_CALLBACK_BLOCK, stream));
}

static void release_run(Slot *slot)
{
    CHECK(aclrtFreeHost(slot->x));
    free(slot->z);
    if (shared)
        return;
    CHECK(aclDestroyDataBuffer(aclmdlGetDatasetBuffer(slot->inputs, 0)));
    CHECK(aclDestroyDataBuffer(aclmdlGetDatasetBuffer(slot->inputs, 1)));
    CHECK(aclmdlDestroyDataset(slot->inputs));
    destroy_dataset(slot->outputs);
    CHECK(aclrtFree(slot->dev_x));
    CHECK(aclrtFree(slot->dev_z));
}

int main(int argc, char *argv[])
{
    int32_t device;
    int run, status = 0;
    AddModel add;
    Slot slots[MAX_RUNS];
    double waited_ms;
    if (argc < 4 || argc > 5 || atoi(argv[3]) < 1 || atoi(argv[3]) > MAX_RUNS) {
        fprintf(stderr, "usage: %s ADD_MODEL DEVICE RUNS(1..%d) [shared]\n", argv[0], MAX_RUNS);
        return 2;
    }
    device = atoi(argv[2]);
    runs = atoi(argv[3]);
    shared = argc == 5 && strcmp(argv[4], "shared") == 0;
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(device));
    CHECK(aclrtGetCurrentContext(&context));
    CHECK(aclrtCreateStream(&stream));
    add_load(&add, argv[1]);
    add_fill(&add, 0.0f); /* y = 1 on the device; x comes per run */
    if (pthread_create(&report_thread, NULL, report_loop, NULL) != 0)
        return 1;
    while (!__atomic_load_n(&subscribed, __ATOMIC_SEQ_CST))
        usleep(1000);
    printf("aclrtSubscribeReport again -> %d\n",
           (int)aclrtSubscribeReport((uint64_t)report_thread, stream));

    memset(slots, 0, sizeof slots);
    for (run = 0; run < runs; ++run) {
        waited_ms = now_ms();
        while (shared && __atomic_load_n(&started_runs, __ATOMIC_SEQ_CST) < run &&
               now_ms() - waited_ms < 5000.0)
            usleep(1000); /* the previous run's callback has started */
        queue_run(&slots[run], &add, run);
        __atomic_store_n(&queued_runs, run + 1, __ATOMIC_SEQ_CST);
    }
    CHECK(aclrtSynchronizeStream(stream));
    waited_ms = now_ms();
    for (;;) { /* a blocking callback has returned when the sync does; wait a little anyway */
        int all = 1;
        pthread_mutex_lock(&lock);
        for (run = 0; run < runs; ++run)
            all = all && slots[run].done;
        pthread_mutex_unlock(&lock);
        if (all || now_ms() - waited_ms > 10000.0)
            break;
        usleep(1000);
    }
    __atomic_store_n(&stop_reports, 1, __ATOMIC_SEQ_CST);
    pthread_join(report_thread, NULL);
    for (run = 0; run < runs; ++run) {
        Slot *slot = &slots[run];
        int on_report = slot->done && pthread_equal(slot->ran_on, report_thread);
        printf("callback %d: done %d, on the report thread %s, aclrtMemcpy -> %d, "
               "correct=%zu of %zu\n",
               run, slot->done, on_report ? "yes" : "no", (int)slot->copy_code, slot->correct,
               add.count);
        if (!on_report || slot->copy_code != 0 || slot->correct != add.count)
            status = 1;
        release_run(slot);
    }
    CHECK(aclrtUnSubscribeReport((uint64_t)report_thread, stream));
    add_release(&add);
    CHECK(aclrtDestroyStream(stream));
    CHECK(aclrtResetDevice(device));
    CHECK(aclFinalize());
    printf("done\n");
    return status;
}
