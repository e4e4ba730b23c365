/*
 * misuse: the codes AscendCL returns for common mistakes, one "name -> code" line each.
 *
 *   misuse ADD_MODEL NOT_A_MODEL_FILE
 *
 * tests/system/test_c_semantics.py makes the same mistakes, in the same order, through the
 * Python facade (import acl) against the same farm and expects the same codes. The lines
 * named "c-only ..." have no pyACL form (a NULL out-pointer); they must be 100000.
 */
#include "common.h"

#define SAY(name, call) printf("%s -> %d\n", name, (int)(call))

static const float payload[16];
static void never_called(void *data) { (void)data; }

int main(int argc, char *argv[])
{
    aclrtStream stream, gone_stream;
    aclrtContext context, gone_context;
    aclrtEvent event, gone_event;
    void *dev = NULL, *freed = NULL, *unknown = (void *)(uintptr_t)0x7f0012345000ULL;
    char host[64];
    uint32_t model;
    int32_t device, value;
    aclmdlDesc *desc;
    aclmdlDataset *inputs, *outputs, *short_inputs;
    aclmdlExecConfigHandle *config;
    AddModel add;
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADD_MODEL NOT_A_MODEL_FILE\n", argv[0]);
        return 2;
    }
    memset(host, 0, sizeof host);
    CHECK(aclInit(NULL));
    /* -- no device yet ------------------------------------------------------------------- */
    SAY("init twice", aclInit(NULL));
    SAY("create stream without a context", aclrtCreateStream(&stream));
    SAY("get device without a context", aclrtGetDevice(&device));
    SAY("malloc without a context", aclrtMalloc(&dev, 64, ACL_MEM_MALLOC_HUGE_FIRST));
    SAY("set device 99", aclrtSetDevice(99));
    SAY("set device -1", aclrtSetDevice(-1));
    SAY("reset device 99", aclrtResetDevice(99));
    SAY("create context on device 99", aclrtCreateContext(&context, 99));
    SAY("c-only get device count NULL", aclrtGetDeviceCount(NULL));
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtGetCurrentContext(&context));
    CHECK(aclrtCreateStream(&stream));
    /* -- memory -------------------------------------------------------------------------- */
    SAY("malloc size 0", aclrtMalloc(&dev, 0, ACL_MEM_MALLOC_HUGE_FIRST));
    SAY("c-only malloc NULL out", aclrtMalloc(NULL, 64, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&dev, 64, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&freed, 64, ACL_MEM_MALLOC_HUGE_FIRST));
    SAY("free", aclrtFree(freed));
    SAY("free twice", aclrtFree(freed));
    SAY("free NULL", aclrtFree(NULL));
    SAY("free unknown pointer", aclrtFree(unknown));
    SAY("free host unknown pointer", aclrtFreeHost(unknown));
    SAY("memcpy kind 99", aclrtMemcpy(dev, 64, host, 64, (aclrtMemcpyKind)99));
    SAY("memcpy count over destMax", aclrtMemcpy(dev, 32, host, 64, ACL_MEMCPY_HOST_TO_DEVICE));
    SAY("memcpy NULL dst", aclrtMemcpy(NULL, 64, host, 64, ACL_MEMCPY_HOST_TO_DEVICE));
    SAY("memcpy NULL src", aclrtMemcpy(dev, 64, NULL, 64, ACL_MEMCPY_HOST_TO_DEVICE));
    SAY("memcpy to freed device memory",
        aclrtMemcpy(freed, 64, host, 64, ACL_MEMCPY_HOST_TO_DEVICE));
    SAY("memcpy count 0", aclrtMemcpy(dev, 64, host, 0, ACL_MEMCPY_HOST_TO_DEVICE));
    SAY("memset count over max", aclrtMemset(dev, 32, 0, 64));
    SAY("memset NULL", aclrtMemset(NULL, 64, 0, 64));
    /* -- streams, events, contexts -------------------------------------------------------- */
    CHECK(aclrtCreateStream(&gone_stream));
    CHECK(aclrtDestroyStream(gone_stream));
    SAY("sync destroyed stream", aclrtSynchronizeStream(gone_stream));
    SAY("destroy stream twice", aclrtDestroyStream(gone_stream));
    SAY("c-only create stream NULL out", aclrtCreateStream(NULL));
    SAY("sync stream timeout 0", aclrtSynchronizeStreamWithTimeout(stream, 0));
    SAY("sync stream timeout -2", aclrtSynchronizeStreamWithTimeout(stream, -2));
    SAY("sync device timeout 0", aclrtSynchronizeDeviceWithTimeout(0));
    CHECK(aclrtCreateEvent(&gone_event));
    CHECK(aclrtDestroyEvent(gone_event));
    SAY("record destroyed event", aclrtRecordEvent(gone_event, stream));
    SAY("destroy event twice", aclrtDestroyEvent(gone_event));
    CHECK(aclrtCreateEvent(&event));
    CHECK(aclrtRecordEvent(event, stream));
    SAY("sync event timeout 0", aclrtSynchronizeEventWithTimeout(event, 0));
    CHECK(aclrtSynchronizeEvent(event));
    CHECK(aclrtDestroyEvent(event));
    CHECK(aclrtCreateContext(&gone_context, 0));
    CHECK(aclrtDestroyContext(gone_context));
    SAY("set destroyed context", aclrtSetCurrentContext(gone_context));
    SAY("destroy context twice", aclrtDestroyContext(gone_context));
    CHECK(aclrtSetCurrentContext(context));
    SAY("c-only create context NULL out", aclrtCreateContext(NULL, 0));
    /* -- callbacks -------------------------------------------------------------------------- */
    SAY("process report without a subscription", aclrtProcessReport(10));
    SAY("launch callback without a report thread",
        aclrtLaunchCallback(never_called, NULL, ACL_CALLBACK_NO_BLOCK, stream));
    SAY("unsubscribe without a subscription", aclrtUnSubscribeReport(1234, stream));
    /* -- models ------------------------------------------------------------------------------ */
    SAY("load missing file", aclmdlLoadFromFile("/nonexistent/model.om", &model));
    SAY("load a file that is not a model", aclmdlLoadFromFile(argv[2], &model));
    SAY("load from NULL memory", aclmdlLoadFromMem(NULL, 0, &model));
    SAY("load from 64 bytes of zeros", aclmdlLoadFromMem(payload, sizeof payload, &model));
    SAY("c-only load NULL out", aclmdlLoadFromFile(argv[1], NULL));
    SAY("unload unknown model", aclmdlUnload(12345));
    desc = aclmdlCreateDesc();
    SAY("get desc of unknown model", aclmdlGetDesc(desc, 12345));
    CHECK(aclmdlDestroyDesc(desc));
    add_load(&add, argv[1]);
    add_fill(&add, 0.0f);
    inputs = add.inputs;
    outputs = add.outputs;
    SAY("c-only get input dims NULL out", aclmdlGetInputDims(add.desc, 0, NULL));
    SAY("execute unknown model", aclmdlExecute(12345, inputs, outputs));
    SAY("execute async unknown model", aclmdlExecuteAsync(12345, inputs, outputs, stream));
    SAY("execute NULL inputs", aclmdlExecute(add.model, NULL, outputs));
    short_inputs = aclmdlCreateDataset();
    CHECK(aclmdlAddDatasetBuffer(short_inputs, aclCreateDataBuffer(add.x, add.size)));
    SAY("execute with too few inputs", aclmdlExecute(add.model, short_inputs, outputs));
    destroy_dataset(short_inputs);
    config = aclmdlCreateExecConfigHandle();
    value = 0;
    SAY("exec config attribute 99",
        aclmdlSetExecConfigOpt(config, (aclmdlExecConfigAttr)99, &value, sizeof value));
    value = -2;
    SAY("exec config stream timeout -2",
        aclmdlSetExecConfigOpt(config, ACL_MDL_STREAM_SYNC_TIMEOUT, &value, sizeof value));
    SAY("c-only exec config NULL value",
        aclmdlSetExecConfigOpt(config, ACL_MDL_STREAM_SYNC_TIMEOUT, NULL, sizeof value));
    SAY("execute async v2 NULL handle",
        aclmdlExecuteAsyncV2(add.model, inputs, outputs, stream, NULL));
    CHECK(aclmdlDestroyExecConfigHandle(config));
    SAY("destroy NULL dataset", aclmdlDestroyDataset(NULL));
    SAY("destroy NULL data buffer", aclDestroyDataBuffer(NULL));
    SAY("add buffer to NULL dataset",
        aclmdlAddDatasetBuffer(NULL, aclmdlGetDatasetBuffer(inputs, 0)));
    CHECK(aclrtSynchronizeStream(stream));
    add_release(&add);
    /* -- the end ---------------------------------------------------------------------------- */
    CHECK(aclrtFree(dev));
    CHECK(aclrtDestroyStream(stream));
    CHECK(aclrtResetDevice(0));
    SAY("finalize", aclFinalize());
    SAY("finalize twice", aclFinalize());
    SAY("set device after finalize", aclrtSetDevice(0));
    return 0;
}
