/*
 * exec_timeout: aclmdlExecuteAsyncV2 with an exec-config stream-sync timeout.
 *
 *   exec_timeout SLOW_MODEL DEVICE TIMEOUT_MS
 *
 * SLOW_MODEL is an add model (z = x + y) whose execution takes longer than TIMEOUT_MS. The
 * handle's ACL_MDL_STREAM_SYNC_TIMEOUT bounds the stream's next sync: it gives up with 507046
 * (ACL_ERROR_RT_STREAM_SYNC_TIMEOUT) while the task runs on; a later plain sync waits for it
 * and the outputs are right. The settings are copied at submission, so the handle may be
 * destroyed right after the submit.
 */
#include "common.h"

int main(int argc, char *argv[])
{
    int32_t device, timeout_ms;
    aclrtStream stream;
    aclmdlExecConfigHandle *config;
    AddModel add;
    aclError timed, waited;
    double started_ms, timed_ms;
    size_t correct;
    if (argc != 4) {
        fprintf(stderr, "usage: %s SLOW_MODEL DEVICE TIMEOUT_MS\n", argv[0]);
        return 2;
    }
    device = atoi(argv[2]);
    timeout_ms = atoi(argv[3]);
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(device));
    CHECK(aclrtCreateStream(&stream));
    add_load(&add, argv[1]);
    add_fill(&add, 3.0f);

    config = aclmdlCreateExecConfigHandle();
    if (config == NULL) {
        fprintf(stderr, "aclmdlCreateExecConfigHandle returned NULL\n");
        return 1;
    }
    CHECK(aclmdlSetExecConfigOpt(config, ACL_MDL_STREAM_SYNC_TIMEOUT, &timeout_ms,
                                 sizeof timeout_ms));
    CHECK(aclmdlExecuteAsyncV2(add.model, add.inputs, add.outputs, stream, config));
    CHECK(aclmdlDestroyExecConfigHandle(config)); /* its settings went with the task */
    started_ms = now_ms();
    timed = aclrtSynchronizeStream(stream);
    timed_ms = now_ms() - started_ms;
    printf("aclrtSynchronizeStream (exec-config timeout %d ms) -> %d after %.0f ms\n",
           (int)timeout_ms, (int)timed, timed_ms);
    waited = aclrtSynchronizeStream(stream); /* the timeout was for one sync: this one waits */
    printf("aclrtSynchronizeStream again -> %d after %.0f ms\n", (int)waited,
           now_ms() - started_ms);
    correct = add_read(&add);
    printf("outputs: correct=%zu of %zu\n", correct, add.count);

    add_release(&add);
    CHECK(aclrtDestroyStream(stream));
    CHECK(aclrtResetDevice(device));
    CHECK(aclFinalize());
    return timed == ACL_ERROR_RT_STREAM_SYNC_TIMEOUT && waited == ACL_SUCCESS &&
                   correct == add.count
               ? 0
               : 1;
}
