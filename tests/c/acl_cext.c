/*
 * acl_cext: a plain-C Python extension module linked with libascendcl, as inference services
 * write their native half. It calls AscendCL from C with the GIL released (aclrt* calls may
 * block); the Python program that imports it also uses `import acl`.
 *
 *   init() -> aclInit(NULL)'s code
 *   current_device() -> (device, code)          aclrtGetDevice
 *   upload(data: bytes) -> (device pointer, code)   aclrtMalloc + aclrtMemcpy host to device
 *   download(pointer, size) -> (bytes, code)    aclrtMemcpy device to host
 *   free(pointer) -> code                       aclrtFree
 *   finalize() -> code                          aclFinalize
 *
 * Built by tests/system/test_c_extension.py: gcc -shared -fPIC with Python's headers, linked
 * -lascendcl from the toolkit tree's runtime/lib64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "acl/acl.h"

static PyObject *ext_init(PyObject *self, PyObject *args)
{
    aclError code;
    (void)self;
    (void)args;
    Py_BEGIN_ALLOW_THREADS
    code = aclInit(NULL);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(code);
}

static PyObject *ext_current_device(PyObject *self, PyObject *args)
{
    int32_t device = -1;
    aclError code;
    (void)self;
    (void)args;
    Py_BEGIN_ALLOW_THREADS
    code = aclrtGetDevice(&device);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(ii)", (int)device, (int)code);
}

static PyObject *ext_upload(PyObject *self, PyObject *args)
{
    Py_buffer data;
    void *dev = NULL;
    aclError code;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    code = aclrtMalloc(&dev, (size_t)data.len, ACL_MEM_MALLOC_HUGE_FIRST);
    if (code == ACL_SUCCESS)
        code = aclrtMemcpy(dev, (size_t)data.len, data.buf, (size_t)data.len,
                           ACL_MEMCPY_HOST_TO_DEVICE);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return Py_BuildValue("(Ki)", (unsigned long long)(uintptr_t)dev, (int)code);
}

static PyObject *ext_download(PyObject *self, PyObject *args)
{
    unsigned long long pointer;
    Py_ssize_t size;
    PyObject *out;
    aclError code;
    (void)self;
    if (!PyArg_ParseTuple(args, "Kn", &pointer, &size))
        return NULL;
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    {
        char *host = PyBytes_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        code = aclrtMemcpy(host, (size_t)size, (void *)(uintptr_t)pointer, (size_t)size,
                           ACL_MEMCPY_DEVICE_TO_HOST);
        Py_END_ALLOW_THREADS
    }
    return Py_BuildValue("(Ni)", out, (int)code);
}

static PyObject *ext_free(PyObject *self, PyObject *args)
{
    unsigned long long pointer;
    aclError code;
    (void)self;
    if (!PyArg_ParseTuple(args, "K", &pointer))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    code = aclrtFree((void *)(uintptr_t)pointer);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(code);
}

static PyObject *ext_finalize(PyObject *self, PyObject *args)
{
    aclError code;
    (void)self;
    (void)args;
    Py_BEGIN_ALLOW_THREADS
    code = aclFinalize();
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(code);
}

static PyMethodDef methods[] = {
    {"init", ext_init, METH_NOARGS, "aclInit(NULL)"},
    {"current_device", ext_current_device, METH_NOARGS, "aclrtGetDevice"},
    {"upload", ext_upload, METH_VARARGS, "aclrtMalloc + aclrtMemcpy H2D"},
    {"download", ext_download, METH_VARARGS, "aclrtMemcpy D2H"},
    {"free", ext_free, METH_VARARGS, "aclrtFree"},
    {"finalize", ext_finalize, METH_NOARGS, "aclFinalize"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "acl_cext", "AscendCL from a C extension module", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_acl_cext(void)
{
    return PyModule_Create(&module);
}
