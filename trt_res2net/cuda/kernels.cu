// The GPU preprocessing and top-k kernels of trt_res2net (NVRTC compiles them at first use).
//
// Not compiled on its own: trt_res2net.cuda.kernels.kernel_source() puts in front of it what comes from
// the model's PreprocessSpec and from kernels.py -- CROP_H, CROP_W, COEF_SCALE, the kernel names PREPROCESS_KERNEL and
// TOPK_KERNEL, the constants PLANE, SCALE, MEAN and STD -- and after it the checks that ImageDesc has the layout of
// kernels.DESC_DTYPE. The tests compile the same text for the CPU with g++ (tests/cpu_kernels.py).
#ifndef CROP_W
#error "compile kernels.cu through trt_res2net.cuda.kernels.kernel_source()"
#endif

#define POS_INF __int_as_float(0x7f800000)
#define NEG_INF __int_as_float(0xff800000)

// One image's parameters; the host fills them with numpy (kernels.DESC_DTYPE), so the layouts must agree.
struct ImageDesc {
    long long offset;          // byte offset of this image's source window in the pixel buffer
    int width, height;         // the whole decoded image: OpenCV clamps at its edges
    int window_x, window_y;    // top-left of the copied window, in image pixels
    int pitch;                 // bytes per row of the copied window (3 bytes per pixel, BGR)
    int crop_x, crop_y;        // centre-crop offsets in the resized image
    int pad_;
    double scale_x, scale_y;   // 1 / ((double)resized / source), as OpenCV computes it
};

// OpenCV's resize table entry for output index d along one axis: two source indices and 11-bit weights.
__device__ __forceinline__ void axis_coeffs(int d, double scale, int size, bool clamp_weights,
                                            int* i0, int* i1, int* w0, int* w1)
{
    float f = __double2float_rn(__dsub_rn(__dmul_rn((double)d + 0.5, scale), 0.5));
    int s = (int)floorf(f);
    f = __fsub_rn(f, (float)s);
    if (clamp_weights) {          // horizontal only: OpenCV moves the weight onto the edge pixel
        if (s < 0) { f = 0.f; s = 0; }
        if (s >= size - 1) { f = 0.f; s = size - 1; }
    }
    *w0 = __float2int_rn(__fmul_rn(__fsub_rn(1.f, f), (float)COEF_SCALE));
    *w1 = __float2int_rn(__fmul_rn(f, (float)COEF_SCALE));
    *i0 = min(max(s, 0), size - 1);
    *i1 = min(max(s + 1, 0), size - 1);
}

extern "C" __global__ void __launch_bounds__(256)
PREPROCESS_KERNEL(const unsigned char* __restrict__ pixels, const ImageDesc* __restrict__ descs,
                       float* __restrict__ out)
{
    const int ox = blockIdx.x * blockDim.x + threadIdx.x;
    const int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= CROP_W || oy >= CROP_H) return;
    const ImageDesc d = descs[blockIdx.z];
    int x0, x1, wx0, wx1, y0, y1, wy0, wy1;
    axis_coeffs(d.crop_x + ox, d.scale_x, d.width, true, &x0, &x1, &wx0, &wx1);
    axis_coeffs(d.crop_y + oy, d.scale_y, d.height, false, &y0, &y1, &wy0, &wy1);
    const unsigned char* row0 = pixels + d.offset + (long long)(y0 - d.window_y) * d.pitch;
    const unsigned char* row1 = pixels + d.offset + (long long)(y1 - d.window_y) * d.pitch;
    const int c0 = (x0 - d.window_x) * 3, c1 = (x1 - d.window_x) * 3;
    float* dst = out + (size_t)blockIdx.z * 3 * CROP_H * CROP_W + oy * CROP_W + ox;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const int h0 = row0[c0 + c] * wx0 + row0[c1 + c] * wx1;
        const int h1 = row1[c0 + c] * wx0 + row1[c1 + c] * wx1;
        int v = ((((h0 >> 4) * wy0) >> 16) + (((h1 >> 4) * wy1) >> 16) + 2) >> 2;
        v = min(max(v, 0), 255);
        const int p = PLANE[c];
        dst[p * CROP_H * CROP_W] = __fdiv_rn(__fsub_rn(__fmul_rn((float)v, SCALE), MEAN[p]), STD[p]);
    }
}

// (value, index) a beats (value, index) b: higher value, then lower index; index -1 means "none".
__device__ __forceinline__ bool beats(float av, int ai, float bv, int bi)
{
    return ai >= 0 && (bi < 0 || av > bv || (av == bv && ai < bi));
}

__device__ float block_max(float v, float* shared)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? shared[lane] : NEG_INF;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    v = shared[0];
    __syncthreads();
    return v;
}

__device__ float block_sum(float v, float* shared)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? shared[lane] : 0.f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    v = shared[0];
    __syncthreads();
    return v;
}

__device__ void block_best(float* v, int* i, float* shared_v, int* shared_i)
{
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_down_sync(0xffffffffu, *v, o);
        const int oi = __shfl_down_sync(0xffffffffu, *i, o);
        if (beats(ov, oi, *v, *i)) { *v = ov; *i = oi; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) { shared_v[warp] = *v; shared_i[warp] = *i; }
    __syncthreads();
    if (warp == 0) {
        *v = lane < warps ? shared_v[lane] : NEG_INF;
        *i = lane < warps ? shared_i[lane] : -1;
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_down_sync(0xffffffffu, *v, o);
            const int oi = __shfl_down_sync(0xffffffffu, *i, o);
            if (beats(ov, oi, *v, *i)) { *v = ov; *i = oi; }
        }
        if (lane == 0) { shared_v[0] = *v; shared_i[0] = *i; }
    }
    __syncthreads();
    *v = shared_v[0];
    *i = shared_i[0];
    __syncthreads();
}

// One block per image. Round r picks the best (value, index) that ranks below round r-1's pick, so ties
// come out in index order, like a stable sort on descending scores. NaN never ranks.
extern "C" __global__ void __launch_bounds__(1024)
TOPK_KERNEL(const float* __restrict__ logits, int num_classes, int k, int apply_softmax,
                     int* __restrict__ out_ids, float* __restrict__ out_scores)
{
    __shared__ float shared_v[32];
    __shared__ int shared_i[32];
    const float* row = logits + (size_t)blockIdx.x * num_classes;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < num_classes; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_max(m, shared_v);
    float s = 0.f;
    if (apply_softmax)
        for (int i = threadIdx.x; i < num_classes; i += blockDim.x) s += expf(__fsub_rn(row[i], m));
    s = block_sum(s, shared_v);
    float prev_v = POS_INF;
    int prev_i = -1;
    for (int r = 0; r < k; ++r) {
        float best_v = NEG_INF;
        int best_i = -1;
        for (int i = threadIdx.x; i < num_classes; i += blockDim.x) {
            const float v = row[i];
            const bool below = v < prev_v || (v == prev_v && i > prev_i);
            if (below && beats(v, i, best_v, best_i)) { best_v = v; best_i = i; }
        }
        block_best(&best_v, &best_i, shared_v, shared_i);
        if (threadIdx.x == 0) {
            const size_t o = (size_t)blockIdx.x * k;
            if (best_i < 0) {     // nothing left that ranks (NaN): every remaining slot says so
                for (int q = r; q < k; ++q) { out_ids[o + q] = -1; out_scores[o + q] = __int_as_float(0x7fc00000); }
            } else {
                out_ids[o + r] = best_i;
                out_scores[o + r] = apply_softmax ? __fdiv_rn(expf(__fsub_rn(best_v, m)), s) : best_v;
            }
        }
        if (best_i < 0) break;
        prev_v = best_v;
        prev_i = best_i;
    }
}
