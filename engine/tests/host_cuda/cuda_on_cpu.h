// Runs CUDA kernels of loupe on the CPU, one block at a time with one std::thread per CUDA
// thread: __shared__ variables are statics shared by the block's threads, __syncthreads() is a
// barrier, atomics are the compiler's, and a warp shuffle is an exchange through a block-wide
// slot array between two barriers (so every thread of the block must shuffle the same number
// of times, as loupe's kernels do to keep warps converged). It lets tests check a kernel's own
// source on a machine without a GPU; it says nothing about speed. Include it, then the kernel.

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned int x, y, z;
};
static thread_local Dim3 threadIdx;
static thread_local Dim3 blockIdx;
static std::barrier<> *block_barrier;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline unsigned int __float_as_uint(float v) {
    unsigned int u;
    std::memcpy(&u, &v, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}
inline unsigned int atomicAdd(unsigned int *p, unsigned int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static float shuffle_slots[1024];
inline float __shfl_xor_sync(unsigned int, float v, int lane_mask) {
    shuffle_slots[threadIdx.x] = v;
    __syncthreads();
    float other = shuffle_slots[threadIdx.x ^ (unsigned int)lane_mask];
    __syncthreads();
    return other;
}
inline float expf(float x) { return std::exp(x); }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
using std::min;

// Runs `kernel` (a call of the kernel with its arguments) on `blocks` blocks of `threads`.
inline void launch(unsigned int blocks, unsigned int threads, const std::function<void()> &kernel) {
    for (unsigned int block = 0; block < blocks; ++block) {
        std::barrier<> barrier(threads);
        block_barrier = &barrier;
        std::vector<std::thread> running;
        for (unsigned int t = 0; t < threads; ++t) {
            running.emplace_back([&, t] {
                threadIdx = {t, 0, 0};
                blockIdx = {block, 0, 0};
                kernel();
            });
        }
        for (auto &thread : running) thread.join();
    }
}
