/*
 * classify_sync: synchronous inference with aclmdlExecute (no stream, no sync call).
 *
 *   classify_sync MODEL DEVICE OUT_PREFIX INPUT_0.bin [INPUT_1.bin ...]
 *
 * Each input file holds the raw bytes of one model input (its size must be the model's);
 * output i is written to OUT_PREFIX_i.bin. Prints each input's dims and, for a float32 first
 * output of shape [N, C], the top class of each of its N rows.
 */
#include "common.h"

static void *read_file(const char *path, size_t size)
{
    FILE *file = fopen(path, "rb");
    void *data = malloc(size);
    if (file == NULL || fread(data, 1, size, file) != size) {
        fprintf(stderr, "cannot read %zu bytes from %s\n", size, path);
        exit(1);
    }
    fclose(file);
    return data;
}

static void write_file(const char *path, const void *data, size_t size)
{
    FILE *file = fopen(path, "wb");
    if (file == NULL || fwrite(data, 1, size, file) != size) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(file);
}

static void print_top_classes(const aclmdlDesc *desc, const float *probs)
{
    aclmdlIODims dims;
    int64_t row, klass;
    CHECK(aclmdlGetOutputDims(desc, 0, &dims));
    if (dims.dimCount != 2 || aclmdlGetOutputDataType(desc, 0) != ACL_FLOAT)
        return;
    for (row = 0; row < dims.dims[0]; ++row) {
        const float *scores = probs + row * dims.dims[1];
        int64_t best = 0;
        for (klass = 1; klass < dims.dims[1]; ++klass)
            best = scores[klass] > scores[best] ? klass : best;
        printf("row %lld: class %lld (%.6f)\n", (long long)row, (long long)best, scores[best]);
    }
}

int main(int argc, char *argv[])
{
    int32_t device;
    uint32_t model;
    aclrtContext context;
    aclmdlDesc *desc;
    aclmdlDataset *inputs, *outputs;
    size_t i, n_in, n_out;
    void **host_out;
    char path[4096];
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL DEVICE OUT_PREFIX INPUT.bin...\n", argv[0]);
        return 2;
    }
    device = atoi(argv[2]);
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(device));
    CHECK(aclrtCreateContext(&context, device));
    CHECK(aclmdlLoadFromFile(argv[1], &model));
    desc = aclmdlCreateDesc();
    CHECK(aclmdlGetDesc(desc, model));
    n_in = aclmdlGetNumInputs(desc);
    n_out = aclmdlGetNumOutputs(desc);
    if ((size_t)(argc - 4) != n_in) {
        fprintf(stderr, "the model takes %zu inputs, %d given\n", n_in, argc - 4);
        return 2;
    }
    inputs = aclmdlCreateDataset();
    for (i = 0; i < n_in; ++i) {
        size_t size = aclmdlGetInputSizeByIndex(desc, i);
        void *host = read_file(argv[4 + i], size), *dev = NULL;
        aclmdlIODims dims;
        size_t d;
        CHECK(aclmdlGetInputDims(desc, i, &dims));
        printf("input %zu (%s) [", i, dims.name);
        for (d = 0; d < dims.dimCount; ++d)
            printf(d ? ",%lld" : "%lld", (long long)dims.dims[d]);
        printf("]\n");
        CHECK(aclrtMalloc(&dev, size, ACL_MEM_MALLOC_HUGE_FIRST));
        CHECK(aclrtMemcpy(dev, size, host, size, ACL_MEMCPY_HOST_TO_DEVICE));
        CHECK(aclmdlAddDatasetBuffer(inputs, aclCreateDataBuffer(dev, size)));
        free(host);
    }
    outputs = aclmdlCreateDataset();
    host_out = calloc(n_out, sizeof *host_out);
    for (i = 0; i < n_out; ++i) {
        size_t size = aclmdlGetOutputSizeByIndex(desc, i);
        void *dev = NULL;
        CHECK(aclrtMalloc(&dev, size, ACL_MEM_MALLOC_HUGE_FIRST));
        CHECK(aclmdlAddDatasetBuffer(outputs, aclCreateDataBuffer(dev, size)));
    }
    CHECK(aclmdlExecute(model, inputs, outputs)); /* returns when the outputs are there */
    printf("aclmdlExecute -> 0\n");
    for (i = 0; i < n_out; ++i) {
        aclDataBuffer *buffer = aclmdlGetDatasetBuffer(outputs, i);
        size_t size = aclGetDataBufferSizeV2(buffer);
        host_out[i] = malloc(size);
        CHECK(aclrtMemcpy(host_out[i], size, aclGetDataBufferAddr(buffer), size,
                          ACL_MEMCPY_DEVICE_TO_HOST));
        snprintf(path, sizeof path, "%s_%zu.bin", argv[3], i);
        write_file(path, host_out[i], size);
    }
    print_top_classes(desc, host_out[0]);
    for (i = 0; i < n_out; ++i)
        free(host_out[i]);
    free(host_out);
    for (i = 0; i < n_in; ++i)
        CHECK(aclrtFree(aclGetDataBufferAddr(aclmdlGetDatasetBuffer(inputs, i))));
    for (i = 0; i < n_out; ++i)
        CHECK(aclrtFree(aclGetDataBufferAddr(aclmdlGetDatasetBuffer(outputs, i))));
    destroy_dataset(inputs);
    destroy_dataset(outputs);
    CHECK(aclmdlDestroyDesc(desc));
    CHECK(aclmdlUnload(model));
    CHECK(aclrtDestroyContext(context));
    CHECK(aclrtResetDevice(device));
    CHECK(aclFinalize());
    printf("done\n");
    return 0;
}
