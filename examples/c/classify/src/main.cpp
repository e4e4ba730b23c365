/*
 * classify: the AscendCL sample flow in C++ (as the Ascend samples write it), run unmodified
 * on an npufarm farm.
 *
 *   main -c acl.json -d DEVICE -m MODEL -o OUT_PREFIX INPUT0.bin [INPUT1.bin ...]
 *
 * aclInit -> set device -> context -> stream -> load the model -> model description ->
 * input/output datasets on device memory -> copy the inputs in -> aclmdlExecuteAsync ->
 * aclrtSynchronizeStream -> copy the outputs back to OUT_PREFIX_<i>.bin -> release everything.
 * Each input file holds exactly the bytes the model's input takes (float32, row-major).
 */
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <unistd.h>
#include <vector>

#include "acl/acl.h"

#define INFO_LOG(fmt, ...) fprintf(stdout, "[INFO]  " fmt "\n", ##__VA_ARGS__)
#define ERROR_LOG(fmt, ...) fprintf(stderr, "[ERROR] " fmt "\n", ##__VA_ARGS__)

#define CHECK_ACL(call)                                                          \
    do {                                                                         \
        aclError check_ret_ = (call);                                            \
        if (check_ret_ != ACL_SUCCESS) {                                         \
            const char *why_ = aclGetRecentErrMsg();                             \
            ERROR_LOG("%s failed: %d (%s)", #call, check_ret_, why_ ? why_ : ""); \
            return false;                                                        \
        }                                                                        \
    } while (0)

namespace {

struct Tensor {
    void *device = nullptr;
    size_t size = 0;
};

class Classifier {
public:
    Classifier(int32_t device, std::string config) : device_(device), config_(std::move(config)) {}
    ~Classifier() { Release(); }

    bool Init()
    {
        CHECK_ACL(aclInit(config_.c_str()));
        initialised_ = true;
        CHECK_ACL(aclrtSetDevice(device_));
        deviceSet_ = true;
        CHECK_ACL(aclrtCreateContext(&context_, device_));
        CHECK_ACL(aclrtCreateStream(&stream_));
        aclrtRunMode mode;
        CHECK_ACL(aclrtGetRunMode(&mode));
        INFO_LOG("device %d ready, run mode %s", device_, mode == ACL_HOST ? "host" : "device");
        return true;
    }

    bool Load(const std::string &path)
    {
        CHECK_ACL(aclmdlLoadFromFile(path.c_str(), &modelId_));
        loaded_ = true;
        desc_ = aclmdlCreateDesc();
        if (desc_ == nullptr) {
            ERROR_LOG("aclmdlCreateDesc failed");
            return false;
        }
        CHECK_ACL(aclmdlGetDesc(desc_, modelId_));
        INFO_LOG("model %s: %zu input(s), %zu output(s)", path.c_str(), aclmdlGetNumInputs(desc_),
                 aclmdlGetNumOutputs(desc_));
        return true;
    }

    bool PrepareInputs(const std::vector<std::string> &files)
    {
        if (files.size() != aclmdlGetNumInputs(desc_)) {
            ERROR_LOG("the model takes %zu inputs, %zu given", aclmdlGetNumInputs(desc_), files.size());
            return false;
        }
        input_ = aclmdlCreateDataset();
        for (size_t i = 0; i < files.size(); ++i) {
            std::ifstream in(files[i], std::ios::binary);
            std::vector<char> host((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
            size_t size = aclmdlGetInputSizeByIndex(desc_, i);
            if (host.size() != size) {
                ERROR_LOG("%s: %zu bytes, input %zu takes %zu", files[i].c_str(), host.size(), i, size);
                return false;
            }
            Tensor tensor;
            if (!AddBuffer(input_, size, &tensor)) {
                return false;
            }
            CHECK_ACL(aclrtMemcpy(tensor.device, size, host.data(), size, ACL_MEMCPY_HOST_TO_DEVICE));
        }
        return true;
    }

    bool PrepareOutputs()
    {
        output_ = aclmdlCreateDataset();
        for (size_t i = 0; i < aclmdlGetNumOutputs(desc_); ++i) {
            Tensor tensor;
            if (!AddBuffer(output_, aclmdlGetOutputSizeByIndex(desc_, i), &tensor)) {
                return false;
            }
            outputs_.push_back(tensor);
        }
        return true;
    }

    bool Execute()
    {
        CHECK_ACL(aclmdlExecuteAsync(modelId_, input_, output_, stream_));
        CHECK_ACL(aclrtSynchronizeStream(stream_));
        return true;
    }

    bool SaveOutputs(const std::string &prefix)
    {
        for (size_t i = 0; i < outputs_.size(); ++i) {
            std::vector<float> host(outputs_[i].size / sizeof(float));
            CHECK_ACL(aclrtMemcpy(host.data(), outputs_[i].size, outputs_[i].device, outputs_[i].size,
                                  ACL_MEMCPY_DEVICE_TO_HOST));
            aclmdlIODims dims;
            CHECK_ACL(aclmdlGetOutputDims(desc_, i, &dims));
            std::string shape;
            for (size_t d = 0; d < dims.dimCount; ++d) {
                shape += (d ? "," : "") + std::to_string(dims.dims[d]);
            }
            std::string path = prefix + "_" + std::to_string(i) + ".bin";
            std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char *>(host.data()),
                                                        outputs_[i].size);
            INFO_LOG("output %zu (%s) [%s]: first value %.6f, written to %s", i, dims.name,
                     shape.c_str(), host.empty() ? 0.0f : host[0], path.c_str());
        }
        return true;
    }

private:
    bool AddBuffer(aclmdlDataset *dataset, size_t size, Tensor *tensor)
    {
        tensor->size = size;
        CHECK_ACL(aclrtMalloc(&tensor->device, size, ACL_MEM_MALLOC_HUGE_FIRST));
        owned_.push_back(tensor->device);
        aclDataBuffer *buffer = aclCreateDataBuffer(tensor->device, size);
        if (buffer == nullptr) {
            ERROR_LOG("aclCreateDataBuffer failed");
            return false;
        }
        buffers_.push_back(buffer);
        CHECK_ACL(aclmdlAddDatasetBuffer(dataset, buffer));
        return true;
    }

    void Release()
    {
        for (aclDataBuffer *buffer : buffers_) {
            (void)aclDestroyDataBuffer(buffer);
        }
        buffers_.clear();
        for (void *device : owned_) {
            (void)aclrtFree(device);
        }
        owned_.clear();
        if (input_ != nullptr) {
            (void)aclmdlDestroyDataset(input_);
            input_ = nullptr;
        }
        if (output_ != nullptr) {
            (void)aclmdlDestroyDataset(output_);
            output_ = nullptr;
        }
        if (desc_ != nullptr) {
            (void)aclmdlDestroyDesc(desc_);
            desc_ = nullptr;
        }
        if (loaded_) {
            (void)aclmdlUnload(modelId_);
            loaded_ = false;
        }
        if (stream_ != nullptr) {
            (void)aclrtDestroyStream(stream_);
            stream_ = nullptr;
        }
        if (context_ != nullptr) {
            (void)aclrtDestroyContext(context_);
            context_ = nullptr;
        }
        if (deviceSet_) {
            (void)aclrtResetDevice(device_);
            deviceSet_ = false;
        }
        if (initialised_) {
            (void)aclFinalize();
            initialised_ = false;
            INFO_LOG("released");
        }
    }

    int32_t device_;
    std::string config_;
    bool initialised_ = false, deviceSet_ = false, loaded_ = false;
    aclrtContext context_ = nullptr;
    aclrtStream stream_ = nullptr;
    uint32_t modelId_ = 0;
    aclmdlDesc *desc_ = nullptr;
    aclmdlDataset *input_ = nullptr, *output_ = nullptr;
    std::vector<aclDataBuffer *> buffers_;
    std::vector<void *> owned_;
    std::vector<Tensor> outputs_;
};

} // namespace

int main(int argc, char *argv[])
{
    std::string config = "../src/acl.json", model, prefix = "output";
    int32_t device = 0;
    int opt;
    while ((opt = getopt(argc, argv, "c:d:m:o:")) != -1) {
        switch (opt) {
            case 'c': config = optarg; break;
            case 'd': device = std::atoi(optarg); break;
            case 'm': model = optarg; break;
            case 'o': prefix = optarg; break;
            default: return 2;
        }
    }
    std::vector<std::string> inputs(argv + optind, argv + argc);
    if (model.empty() || inputs.empty()) {
        ERROR_LOG("usage: %s -c acl.json -d DEVICE -m MODEL -o OUT_PREFIX INPUT.bin...", argv[0]);
        return 2;
    }
    Classifier classifier(device, config);
    bool ok = classifier.Init() && classifier.Load(model) && classifier.PrepareInputs(inputs) &&
              classifier.PrepareOutputs() && classifier.Execute() && classifier.SaveOutputs(prefix);
    INFO_LOG("%s", ok ? "run success" : "run failed");
    return ok ? 0 : 1;
}
