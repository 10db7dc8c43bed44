// Lets g++ (C++20) compile the CUDA source of trt_res2net/cuda/kernels.cu, as kernels.kernel_source() completes it,
// unchanged, for the CPU tests.
//
// - Qualifiers vanish, __shared__ becomes `static`: blocks run one after another, so one copy per kernel is
//   the block's shared memory.
// - blockIdx/threadIdx are thread_local (fiber mode sets them on every switch); blockDim/gridDim are global
//   and launches are serialised by a mutex, as the static __shared__ arrays require anyway.
// - The `_rn` intrinsics are the plain IEEE operations: compiled with -ffp-contract=off -fno-fast-math on
//   SSE2/NEON, each float or double step rounds to nearest even, as on the GPU.
// - Three ways to run a block's threads:
//     shim_launch_loop:    threads one after another (kernels without barriers or shuffles);
//     shim_launch_threads: one std::thread per CUDA thread, std::barrier for __syncthreads and per warp for
//                          __shfl_down_sync (real concurrency: a missing barrier shows up as a race);
//     shim_launch_fibers:  the same threads as stackful coroutines on one OS thread, switched at every
//                          barrier (deterministic, and ~50x cheaper than OS threads on a 2-core host).
// __CUDACC__ and __CUDACC_RTC__ stay undefined: the source's offset static_asserts are meant for g++.
#ifndef CUDA_CPU_SHIM_H
#define CUDA_CPU_SHIM_H

#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __constant__ static const
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

#define SHIM_TLS thread_local __attribute__((tls_model("initial-exec")))  // no __tls_get_addr per access
inline SHIM_TLS dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

[[noreturn]] inline void shim_fail(const char* what)
{
    std::fprintf(stderr, "cuda_cpu_shim: %s\n", what);
    std::abort();
}

// -- intrinsics --------------------------------------------------------------------------------------------

inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
// nearbyintf rounds in the current mode, round-to-nearest-even by default, as cvt.rni does.
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
// floorf, fmaxf (NaN loses, as in CUDA) and expf are glibc's, from <math.h>.

// -- barriers: one interface, three backends ---------------------------------------------------------------

enum class ShimMode { loop, threads, fibers };

struct ShimFiberBarrier {
    int expected = 0, arrived = 0;
    unsigned generation = 0;
};

struct ShimLane {
    int lane = 0, warp = 0;
    unsigned phase = 0;  // which half of the warp's exchange buffer the next shuffle uses
};

constexpr int SHIM_MAX_WARPS = 32;

struct ShimBlockState {
    ShimMode mode = ShimMode::loop;
    std::unique_ptr<std::barrier<>> block_barrier;
    std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
    ShimFiberBarrier fiber_block;
    ShimFiberBarrier fiber_warps[SHIM_MAX_WARPS];
    // Shuffle exchange: lane l writes slot [warp][phase][l], reads [warp][phase][l + delta] after the warp
    // barrier. Two halves alternate, so a lane cannot overwrite a value a slower lane has yet to read.
    std::uint64_t exchange[SHIM_MAX_WARPS][2][32];
};

inline ShimBlockState shim_state;
inline SHIM_TLS ShimLane shim_own_lane;
inline SHIM_TLS ShimLane* shim_lane = nullptr;  // fiber mode: the running fiber's; else shim_own_lane
inline std::mutex shim_launch_mutex;

void shim_fiber_wait(ShimFiberBarrier& b);

inline void shim_sync_block()
{
    switch (shim_state.mode) {
    case ShimMode::threads: shim_state.block_barrier->arrive_and_wait(); return;
    case ShimMode::fibers: shim_fiber_wait(shim_state.fiber_block); return;
    default: shim_fail("__syncthreads in a kernel launched with shim_launch_loop (use threads or fibers)");
    }
}

inline void shim_sync_warp(int warp)
{
    switch (shim_state.mode) {
    case ShimMode::threads: shim_state.warp_barriers[warp]->arrive_and_wait(); return;
    case ShimMode::fibers: shim_fiber_wait(shim_state.fiber_warps[warp]); return;
    default: shim_fail("__shfl_down_sync in a kernel launched with shim_launch_loop (use threads or fibers)");
    }
}

inline void __syncthreads() { shim_sync_block(); }

// Lane l gets lane l + delta's value when that lane is in the warp, else its own (CUDA's shfl.down).
template <class T>
T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize)
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(std::uint64_t));
    if (mask != 0xffffffffu || width != warpSize) shim_fail("__shfl_down_sync: only full warps are emulated");
    ShimLane& me = shim_lane ? *shim_lane : shim_own_lane;
    std::uint64_t(&slots)[32] = shim_state.exchange[me.warp][me.phase];
    me.phase ^= 1u;
    std::memcpy(&slots[me.lane], &var, sizeof(T));
    shim_sync_warp(me.warp);
    T out = var;
    const unsigned int src = static_cast<unsigned int>(me.lane) + delta;
    if (src < static_cast<unsigned int>(warpSize)) std::memcpy(&out, &slots[src], sizeof(T));
    return out;
}

// -- launchers ---------------------------------------------------------------------------------------------

inline void shim_set_thread_index(unsigned int linear)
{
    threadIdx.x = linear % blockDim.x;
    threadIdx.y = linear / blockDim.x % blockDim.y;
    threadIdx.z = linear / (blockDim.x * blockDim.y);
}

inline ShimLane shim_lane_of(unsigned int linear)
{
    return ShimLane{static_cast<int>(linear % warpSize), static_cast<int>(linear / warpSize), 0u};
}

template <class Block>
void shim_for_each_block(Block&& block)
{
    for (unsigned int z = 0; z < gridDim.z; ++z)
        for (unsigned int y = 0; y < gridDim.y; ++y)
            for (unsigned int x = 0; x < gridDim.x; ++x) block(dim3{x, y, z});
}

inline unsigned int shim_begin(dim3 grid, dim3 block, ShimMode mode)
{
    gridDim = grid;
    blockDim = block;
    shim_state.mode = mode;
    const unsigned int n = block.x * block.y * block.z;
    if (mode != ShimMode::loop && (n % warpSize != 0 || n / warpSize > SHIM_MAX_WARPS))
        shim_fail("a block of threads must be 32..1024 threads in whole warps");
    return n;
}

// Threads of a block one after another: kernels without __syncthreads or shuffles.
template <class Kernel>
void shim_launch_loop(dim3 grid, dim3 block, Kernel&& kernel)
{
    std::lock_guard lock(shim_launch_mutex);
    const unsigned int n = shim_begin(grid, block, ShimMode::loop);
    shim_for_each_block([&](dim3 b) {
        blockIdx = b;
        for (unsigned int t = 0; t < n; ++t) {
            shim_set_thread_index(t);
            kernel();
        }
    });
}

// One std::thread per CUDA thread, alive for the whole launch; a block barrier after each block keeps its
// threads from starting the next block while another still uses the (static) shared memory.
template <class Kernel>
void shim_launch_threads(dim3 grid, dim3 block, Kernel&& kernel)
{
    std::lock_guard lock(shim_launch_mutex);
    const unsigned int n = shim_begin(grid, block, ShimMode::threads);
    shim_state.block_barrier = std::make_unique<std::barrier<>>(n);
    shim_state.warp_barriers.clear();
    for (unsigned int w = 0; w < n / warpSize; ++w)
        shim_state.warp_barriers.push_back(std::make_unique<std::barrier<>>(warpSize));
    {
        std::vector<std::jthread> threads;
        threads.reserve(n);
        for (unsigned int t = 0; t < n; ++t)
            threads.emplace_back([&, t] {
                shim_set_thread_index(t);
                shim_own_lane = shim_lane_of(t);
                shim_for_each_block([&](dim3 b) {
                    blockIdx = b;
                    kernel();
                    shim_state.block_barrier->arrive_and_wait();
                });
            });
    }
    shim_state.warp_barriers.clear();
    shim_state.block_barrier.reset();
    shim_state.mode = ShimMode::loop;
}

// -- fibers ------------------------------------------------------------------------------------------------

struct ShimFiber {
    unsigned int linear = 0;
    bool done = false;
    ShimFiberBarrier* waiting = nullptr;
    unsigned wait_generation = 0;
    ShimLane lane;
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t context;
#endif
    std::unique_ptr<unsigned char[]> stack;
};

constexpr std::size_t SHIM_FIBER_STACK = 64 * 1024;

struct ShimScheduler {
    std::vector<ShimFiber> fibers;
    ShimFiber* current = nullptr;
    const std::function<void()>* kernel = nullptr;
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t context;
#endif
};

inline ShimScheduler shim_scheduler;

#if defined(__x86_64__)
// shim_switch(&save, next): push the callee-saved registers, store the stack pointer in *save, continue on
// `next` (a stack shim_switch left, or one prepared by shim_fiber_prepare). The System V ABI makes every
// other register caller-saved, so this is a complete context switch for code that leaves MXCSR alone.
extern "C" void shim_switch(void** save, void* next);
asm(R"(
    .text
    .p2align 4
    .globl shim_switch
    .hidden shim_switch
    .type shim_switch, @function
shim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size shim_switch, .-shim_switch
)");
#endif

[[noreturn]] inline void shim_fiber_main()
{
    ShimScheduler& s = shim_scheduler;
    (*s.kernel)();
    s.current->done = true;
#if defined(__x86_64__)
    void* dead;
    shim_switch(&dead, s.sp);
#else
    swapcontext(&s.current->context, &s.context);
#endif
    shim_fail("a finished fiber was resumed");
}

inline void shim_fiber_prepare(ShimFiber& f)
{
    if (!f.stack) f.stack = std::make_unique<unsigned char[]>(SHIM_FIBER_STACK);
    f.done = false;
    f.waiting = nullptr;
    f.lane = shim_lane_of(f.linear);
#if defined(__SANITIZE_ADDRESS__)
    // A finished fiber never returns from its frames: clear their redzones before reusing the stack.
    __asan_unpoison_memory_region(f.stack.get(), SHIM_FIBER_STACK);
#endif
#if defined(__x86_64__)
    // Six zeroed callee-saved registers, then shim_fiber_main as the return address; rsp is 16-byte
    // aligned before that slot, so the function starts as if it had been called.
    auto top = reinterpret_cast<std::uintptr_t>(f.stack.get() + SHIM_FIBER_STACK) & ~std::uintptr_t{15};
    auto* sp = reinterpret_cast<void**>(top) - 2;
    sp[0] = reinterpret_cast<void*>(&shim_fiber_main);
    sp[1] = nullptr;
    sp -= 6;
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    f.sp = sp;
#else
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = SHIM_FIBER_STACK;
    f.context.uc_link = nullptr;
    makecontext(&f.context, reinterpret_cast<void (*)()>(&shim_fiber_main), 0);
#endif
}

inline void shim_fiber_wait(ShimFiberBarrier& b)
{
    const unsigned generation = b.generation;
    if (++b.arrived == b.expected) {  // the last to arrive releases the others and carries on
        b.arrived = 0;
        ++b.generation;
        return;
    }
    ShimScheduler& s = shim_scheduler;
    ShimFiber* me = s.current;
    me->waiting = &b;
    me->wait_generation = generation;
#if defined(__x86_64__)
    shim_switch(&me->sp, s.sp);
#else
    swapcontext(&me->context, &s.context);
#endif
    // Back on this fiber: the scheduler has restored its threadIdx and lane.
}

// The threads of a block as fibers on this OS thread: the scheduler resumes them in thread order until
// each reaches a barrier; a barrier releases when all its threads have arrived.
template <class Kernel>
void shim_launch_fibers(dim3 grid, dim3 block, Kernel&& kernel)
{
    std::lock_guard lock(shim_launch_mutex);
    const unsigned int n = shim_begin(grid, block, ShimMode::fibers);
    ShimScheduler& s = shim_scheduler;
    const std::function<void()> body = [&] { kernel(); };
    s.kernel = &body;
    s.fibers.resize(n);
    const dim3 saved_thread = threadIdx;
    shim_for_each_block([&](dim3 b) {
        blockIdx = b;
        shim_state.fiber_block = ShimFiberBarrier{static_cast<int>(n), 0, 0};
        for (unsigned int w = 0; w < n / warpSize; ++w) shim_state.fiber_warps[w] = ShimFiberBarrier{warpSize, 0, 0};
        for (unsigned int t = 0; t < n; ++t) {
            s.fibers[t].linear = t;
            shim_fiber_prepare(s.fibers[t]);
        }
        unsigned int finished = 0;
        while (finished < n) {
            bool resumed = false;
            for (ShimFiber& f : s.fibers) {
                if (f.done || (f.waiting && f.waiting->generation == f.wait_generation)) continue;
                f.waiting = nullptr;
                s.current = &f;
                shim_set_thread_index(f.linear);
                shim_lane = &f.lane;
#if defined(__x86_64__)
                shim_switch(&s.sp, f.sp);
#else
                swapcontext(&s.context, &f.context);
#endif
                resumed = true;
                if (f.done) ++finished;
            }
            if (!resumed) shim_fail("deadlock: threads wait at different barriers (divergent __syncthreads?)");
        }
    });
    threadIdx = saved_thread;
    shim_lane = nullptr;
    s.current = nullptr;
    s.kernel = nullptr;
    shim_state.mode = ShimMode::loop;
}

#endif  // CUDA_CPU_SHIM_H
