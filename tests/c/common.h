/*
 * What the C test programs share: CHECK, and an "add" model (z = x + y over float32 inputs of
 * one size, configs/models/add.toml and copies of it) with its device buffers and datasets.
 *
 * Plain AscendCL C, nothing npufarm-specific: built with gcc against the toolkit tree's headers
 * and link-time stub, run with its set_env.sh sourced (tests/system/test_c_semantics.py).
 */
#ifndef NPUFARM_TESTS_C_COMMON_H
#define NPUFARM_TESTS_C_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acl/acl.h"

#define CHECK(call)                                                                 \
    do {                                                                            \
        aclError check_ret_ = (call);                                               \
        if (check_ret_ != ACL_SUCCESS) {                                            \
            fprintf(stderr, "%s:%d: %s failed: %d\n", __FILE__, __LINE__, #call,    \
                    (int)check_ret_);                                               \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

/* One loaded add model and one set of buffers: x and y in, z out. */
typedef struct {
    uint32_t model;
    aclmdlDesc *desc;
    size_t size, count;
    void *x, *y, *z;
    aclmdlDataset *inputs, *outputs;
    float *host_x, *host_y, *host_z;
} AddModel;

static inline double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static inline aclmdlDataset *dataset_of(void *first, void *second, size_t size)
{
    aclmdlDataset *dataset = aclmdlCreateDataset();
    CHECK(aclmdlAddDatasetBuffer(dataset, aclCreateDataBuffer(first, size)));
    if (second != NULL)
        CHECK(aclmdlAddDatasetBuffer(dataset, aclCreateDataBuffer(second, size)));
    return dataset;
}

/* Load MODEL on the current context's device; x, y, z on the device, hosts mirrors in RAM. */
static inline void add_load(AddModel *add, const char *path)
{
    memset(add, 0, sizeof *add);
    CHECK(aclmdlLoadFromFile(path, &add->model));
    add->desc = aclmdlCreateDesc();
    CHECK(aclmdlGetDesc(add->desc, add->model));
    add->size = aclmdlGetInputSizeByIndex(add->desc, 0);
    add->count = add->size / sizeof(float);
    add->host_x = malloc(add->size);
    add->host_y = malloc(add->size);
    add->host_z = malloc(add->size);
    CHECK(aclrtMalloc(&add->x, add->size, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&add->y, add->size, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&add->z, add->size, ACL_MEM_MALLOC_HUGE_FIRST));
    add->inputs = dataset_of(add->x, add->y, add->size);
    add->outputs = dataset_of(add->z, NULL, add->size);
}

/* x[i] = base + i / 2, y[i] = 1, copied to the device; z on the device set to -1. */
static inline void add_fill(AddModel *add, float base)
{
    size_t i;
    for (i = 0; i < add->count; ++i) {
        add->host_x[i] = base + (float)i * 0.5f;
        add->host_y[i] = 1.0f;
        add->host_z[i] = -1.0f;
    }
    CHECK(aclrtMemcpy(add->x, add->size, add->host_x, add->size, ACL_MEMCPY_HOST_TO_DEVICE));
    CHECK(aclrtMemcpy(add->y, add->size, add->host_y, add->size, ACL_MEMCPY_HOST_TO_DEVICE));
    CHECK(aclrtMemcpy(add->z, add->size, add->host_z, add->size, ACL_MEMCPY_HOST_TO_DEVICE));
}

/* How many elements of host_z equal x + y. */
static inline size_t add_correct(const AddModel *add, const float *z)
{
    size_t i, correct = 0;
    for (i = 0; i < add->count; ++i)
        correct += z[i] == add->host_x[i] + add->host_y[i] ? 1 : 0;
    return correct;
}

/* z copied back (a plain synchronous D2H copy), then how many elements are right. */
static inline size_t add_read(AddModel *add)
{
    CHECK(aclrtMemcpy(add->host_z, add->size, add->z, add->size, ACL_MEMCPY_DEVICE_TO_HOST));
    return add_correct(add, add->host_z);
}

static inline void destroy_dataset(aclmdlDataset *dataset)
{
    size_t i;
    for (i = 0; i < aclmdlGetDatasetNumBuffers(dataset); ++i)
        CHECK(aclDestroyDataBuffer(aclmdlGetDatasetBuffer(dataset, i)));
    CHECK(aclmdlDestroyDataset(dataset));
}

static inline void add_release(AddModel *add)
{
    destroy_dataset(add->inputs);
    destroy_dataset(add->outputs);
    CHECK(aclrtFree(add->x));
    CHECK(aclrtFree(add->y));
    CHECK(aclrtFree(add->z));
    CHECK(aclmdlDestroyDesc(add->desc));
    CHECK(aclmdlUnload(add->model));
    free(add->host_x);
    free(add->host_y);
    free(add->host_z);
}

#endif
