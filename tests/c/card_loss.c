/*
 * card_loss: a card lost under a running program answers 507010 until the device is reset.
 *
 *   card_loss ADD_MODEL DEVICE
 *
 * Runs the model once, prints "READY" and reads a line from stdin: meanwhile the test kills
 * the card's process. Then every device call (submit, sync, malloc, copy) returns 507010
 * (ACL_ERROR_RT_LOST_HEARTBEAT), twice over; aclrtResetDevice + aclrtSetDevice attach to the
 * restarted card and the model runs again with right outputs.
 */
#include <unistd.h>

#include "common.h"

static void print_status(aclrtDeviceStatus status)
{
    printf("aclrtQueryDeviceStatus: %s\n",
           status == ACL_RT_DEVICE_STATUS_ABNORMAL ? "abnormal" : "normal");
}

static int lost_round(const char *round, AddModel *add, aclrtStream stream)
{
    void *extra = NULL;
    aclError submit, sync, malloc_code, copy;
    submit = aclmdlExecuteAsync(add->model, add->inputs, add->outputs, stream);
    sync = aclrtSynchronizeStream(stream);
    malloc_code = aclrtMalloc(&extra, 64, ACL_MEM_MALLOC_HUGE_FIRST);
    copy = aclrtMemcpy(add->x, add->size, add->host_x, add->size, ACL_MEMCPY_HOST_TO_DEVICE);
    printf("%s: aclmdlExecuteAsync -> %d, aclrtSynchronizeStream -> %d, aclrtMalloc -> %d, "
           "aclrtMemcpy -> %d\n",
           round, (int)submit, (int)sync, (int)malloc_code, (int)copy);
    return submit == ACL_ERROR_RT_LOST_HEARTBEAT && sync == ACL_ERROR_RT_LOST_HEARTBEAT &&
           malloc_code == ACL_ERROR_RT_LOST_HEARTBEAT && copy == ACL_ERROR_RT_LOST_HEARTBEAT;
}

int main(int argc, char *argv[])
{
    int32_t device;
    aclrtStream stream;
    aclrtDeviceStatus status = ACL_RT_DEVICE_STATUS_NORMAL;
    AddModel add;
    char line[64];
    double started_ms;
    int sticky;
    size_t correct;
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADD_MODEL DEVICE\n", argv[0]);
        return 2;
    }
    device = atoi(argv[2]);
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(device));
    CHECK(aclrtCreateStream(&stream));
    add_load(&add, argv[1]);
    add_fill(&add, 1.0f);
    CHECK(aclmdlExecuteAsync(add.model, add.inputs, add.outputs, stream));
    CHECK(aclrtSynchronizeStream(stream));
    printf("before: correct=%zu of %zu\n", add_read(&add), add.count);
    printf("READY\n");
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL)
        return 3;

    started_ms = now_ms(); /* the farm tells this client of the loss as it declares it */
    while (status != ACL_RT_DEVICE_STATUS_ABNORMAL && now_ms() - started_ms < 10000.0) {
        CHECK(aclrtQueryDeviceStatus(device, &status));
        if (status != ACL_RT_DEVICE_STATUS_ABNORMAL)
            usleep(10000);
    }
    print_status(status);
    sticky = lost_round("first", &add, stream);
    sticky = lost_round("again", &add, stream) && sticky;

    /* what the lost card held is gone with it: only the host-side handles are released */
    aclrtFree(add.x);
    aclrtFree(add.y);
    aclrtFree(add.z);
    aclmdlUnload(add.model);
    destroy_dataset(add.inputs);
    destroy_dataset(add.outputs);
    CHECK(aclmdlDestroyDesc(add.desc));
    aclrtDestroyStream(stream);
    printf("aclrtResetDevice -> %d\n", (int)aclrtResetDevice(device));
    printf("aclrtSetDevice -> %d\n", (int)aclrtSetDevice(device));
    CHECK(aclrtQueryDeviceStatus(device, &status));
    print_status(status);

    CHECK(aclrtCreateStream(&stream));
    add_load(&add, argv[1]);
    add_fill(&add, 2.0f);
    CHECK(aclmdlExecuteAsync(add.model, add.inputs, add.outputs, stream));
    CHECK(aclrtSynchronizeStream(stream));
    correct = add_read(&add);
    printf("after reset: correct=%zu of %zu\n", correct, add.count);
    add_release(&add);
    CHECK(aclrtDestroyStream(stream));
    CHECK(aclrtResetDevice(device));
    CHECK(aclFinalize());
    printf("done\n");
    return sticky && correct == add.count ? 0 : 1;
}
