/*
 * companions: a C99 program that links the companion libraries a real tool links (ascendcl,
 * acl_dvpp, acl_cblas), calls what the farm does not emulate, gets 200006
 * (ACL_ERROR_FEATURE_UNSUPPORTED) or a NULL handle, and carries on with its supported path.
 *
 *   main [DEVICE]
 *
 * Prints one "name -> result" line per call.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl/acl.h"
#include "acl/ops/acl_cblas.h"
#include "acl/ops/acl_dvpp.h"

static int failures;

static void expect(const char *name, aclError got, aclError want)
{
    printf("%s -> %d\n", name, (int)got);
    if (got != want) {
        fprintf(stderr, "%s: expected %d, got %d\n", name, (int)want, (int)got);
        ++failures;
    }
}

int main(int argc, char *argv[])
{
    int32_t device = argc > 1 ? atoi(argv[1]) : 0;
    aclrtStream stream = NULL;
    acldvppChannelDesc *channel;
    void *dvpp = NULL, *device_buffer = NULL;
    float host[256], back[256];
    aclFloat16 alpha = aclFloatToFloat16(1.0f), beta = aclFloatToFloat16(0.0f);
    size_t i;

    expect("aclInit", aclInit(NULL), ACL_SUCCESS);
    expect("aclrtSetDevice", aclrtSetDevice(device), ACL_SUCCESS);
    expect("aclrtCreateStream", aclrtCreateStream(&stream), ACL_SUCCESS);

    /* the media path: no DVPP on the farm */
    channel = acldvppCreateChannelDesc();
    printf("acldvppCreateChannelDesc -> %s\n", channel == NULL ? "NULL" : "handle");
    expect("acldvppCreateChannel", acldvppCreateChannel(channel), ACL_ERROR_FEATURE_UNSUPPORTED);
    /* ...but DVPP memory is device memory, and that works */
    expect("acldvppMalloc", acldvppMalloc(&dvpp, 4096), ACL_SUCCESS);
    expect("aclrtMemset", aclrtMemset(dvpp, 4096, 0, 4096), ACL_SUCCESS);
    expect("acldvppFree", acldvppFree(dvpp), ACL_SUCCESS);

    /* BLAS: not emulated either */
    expect("aclblasHgemm", aclblasHgemm(ACL_TRANS_N, ACL_TRANS_N, ACL_TRANS_N, 16, 16, 16, &alpha, NULL,
                                        16, NULL, 16, &beta, NULL, 16, ACL_COMPUTE_HIGH_PRECISION, stream),
           ACL_ERROR_FEATURE_UNSUPPORTED);

    /* the supported path goes on: a round trip through device memory */
    for (i = 0; i < 256; ++i)
        host[i] = (float)i * 0.25f;
    expect("aclrtMalloc", aclrtMalloc(&device_buffer, sizeof host, ACL_MEM_MALLOC_HUGE_FIRST), ACL_SUCCESS);
    expect("aclrtMemcpyH2D",
           aclrtMemcpy(device_buffer, sizeof host, host, sizeof host, ACL_MEMCPY_HOST_TO_DEVICE), ACL_SUCCESS);
    expect("aclrtMemcpyD2H",
           aclrtMemcpy(back, sizeof back, device_buffer, sizeof host, ACL_MEMCPY_DEVICE_TO_HOST), ACL_SUCCESS);
    printf("round trip -> %s\n", memcmp(host, back, sizeof host) == 0 ? "equal" : "DIFFERENT");
    if (memcmp(host, back, sizeof host) != 0)
        ++failures;

    expect("aclrtFree", aclrtFree(device_buffer), ACL_SUCCESS);
    expect("aclrtDestroyStream", aclrtDestroyStream(stream), ACL_SUCCESS);
    expect("aclrtResetDevice", aclrtResetDevice(device), ACL_SUCCESS);
    expect("aclFinalize", aclFinalize(), ACL_SUCCESS);
    printf("%s\n", failures ? "FAILED" : "done");
    return failures ? 1 : 0;
}
