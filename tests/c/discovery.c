/*
 * Discovery before aclInit, as Ray and deployment tools do it on a node: the device count, the
 * SoC name and the ACL version, asked before aclInit (and once more after it, for comparison).
 *
 * Prints one "key=value" line per answer:
 *   before_count=N before_ret=R before_soc=NAME|(null) version=MAJ.MIN.PATCH version_ret=R
 *   init_ret=R after_count=N after_ret=R after_soc=NAME|(null)
 * With "--no-init" it stops after the calls before aclInit.
 */
#include <stdio.h>
#include <string.h>

#include "acl/acl.h"

static void show_count(const char *when)
{
    uint32_t count = 12345;
    aclError ret = aclrtGetDeviceCount(&count);
    const char *soc = aclrtGetSocName();
    printf("%s_count=%u\n%s_ret=%d\n%s_soc=%s\n", when, count, when, (int)ret, when,
           soc != NULL ? soc : "(null)");
}

int main(int argc, char **argv)
{
    int32_t major = -1, minor = -1, patch = -1;
    show_count("before");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* CANN deprecates it; tools call it */
    aclError ret = aclrtGetVersion(&major, &minor, &patch);
#pragma GCC diagnostic pop
    printf("version=%d.%d.%d\nversion_ret=%d\n", major, minor, patch, (int)ret);
    printf("null_count_ret=%d\n", (int)aclrtGetDeviceCount(NULL));
    if (argc > 1 && strcmp(argv[1], "--no-init") == 0)
        return 0;
    printf("init_ret=%d\n", (int)aclInit(NULL));
    show_count("after");
    printf("finalize_ret=%d\n", (int)aclFinalize());
    return 0;
}
