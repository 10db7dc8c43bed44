/* A stand-in for the NVIDIA driver's libcuda.so.1 on a machine without one, so that cuda-python's real
 * bindings run up to the driver: cuDriverGetVersion reports STUB_CUDA_DRIVER_VERSION (default 13000, CUDA 13.0),
 * the error-string calls describe their code as the real driver does, and every other entry point, looked up by
 * name or through cuGetProcAddress, answers CUDA_ERROR_NO_DEVICE. */
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
enum { CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_NO_DEVICE = 100 };

static CUresult no_device(void) { return CUDA_ERROR_NO_DEVICE; }

CUresult cuDriverGetVersion(int *version) {
    const char *v = getenv("STUB_CUDA_DRIVER_VERSION");
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = v ? atoi(v) : 13000;
    return CUDA_SUCCESS;
}

/* The real driver sets *text for every code it knows, and NULL (with CUDA_ERROR_INVALID_VALUE) otherwise:
 * cuda-python 12.6's runtime reads the pointer without looking at the result. */
static CUresult describe(CUresult error, const char **text, const char *name, const char *words) {
    if (!text) return CUDA_ERROR_INVALID_VALUE;
    if (error == CUDA_SUCCESS) { *text = name ? "CUDA_SUCCESS" : "no error"; return CUDA_SUCCESS; }
    if (error == CUDA_ERROR_NO_DEVICE) { *text = name ? name : words; return CUDA_SUCCESS; }
    *text = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}
CUresult cuGetErrorName(CUresult error, const char **text) {
    return describe(error, text, "CUDA_ERROR_NO_DEVICE", 0);
}
CUresult cuGetErrorString(CUresult error, const char **text) {
    return describe(error, text, 0, "no CUDA-capable device is detected");
}
CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_ERROR_NO_DEVICE; }

CUresult cuGetProcAddress_v2(const char *symbol, void **fn, int version, unsigned long long flags, int *status) {
    (void)version; (void)flags;
    if (!symbol || !fn) return CUDA_ERROR_INVALID_VALUE;
    if (!strcmp(symbol, "cuDriverGetVersion")) *fn = (void *)cuDriverGetVersion;
    else if (!strcmp(symbol, "cuGetErrorName")) *fn = (void *)cuGetErrorName;
    else if (!strcmp(symbol, "cuGetErrorString")) *fn = (void *)cuGetErrorString;
    else if (!strcmp(symbol, "cuGetProcAddress")) *fn = (void *)cuGetProcAddress_v2;
    else *fn = (void *)no_device;
    if (status) *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
    return CUDA_SUCCESS;
}
CUresult cuGetProcAddress(const char *symbol, void **fn, int version, unsigned long long flags) {
    return cuGetProcAddress_v2(symbol, fn, version, flags, 0);
}
