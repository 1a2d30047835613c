// Runs a CUDA kernel of loupe on the CPU, one block at a time with one std::thread per CUDA
// thread: __shared__ variables are statics shared by the block's threads, __syncthreads() is a
// barrier, atomics are the compiler's. It lets tests check the kernel's own source (included
// below as KERNEL) on a machine without a GPU; it says nothing about speed.
//
//   c++ -std=c++20 -O1 -pthread -DKERNEL='"select.cu"' block_emulator.cpp -o emulator
//   emulator INPUT OUTPUT
// INPUT: u32 n, d, k, cap, then n*d f32 (row-major). OUTPUT: n u32 counts, n*cap u32 indices,
// n*cap f32 values (loupe_select_rows' three outputs).

#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstring>
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
inline unsigned int atomicAdd(unsigned int *p, unsigned int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
using std::min;

#include KERNEL

static const unsigned int BLOCK_THREADS = THREADS;

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: emulator INPUT OUTPUT\n");
        return 2;
    }
    FILE *in = std::fopen(argv[1], "rb");
    if (!in) return 2;
    uint32_t header[4];
    if (std::fread(header, sizeof(uint32_t), 4, in) != 4) return 2;
    const uint32_t n = header[0], d = header[1], k = header[2], cap = header[3];
    std::vector<float> values((size_t)n * d);
    if (std::fread(values.data(), sizeof(float), values.size(), in) != values.size()) return 2;
    std::fclose(in);
    std::vector<uint32_t> counts(n), indices((size_t)n * cap);
    std::vector<float> chosen((size_t)n * cap);
    for (uint32_t row = 0; row < n; ++row) {
        std::barrier<> barrier(BLOCK_THREADS);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned int t = 0; t < BLOCK_THREADS; ++t) {
            threads.emplace_back([&, t] {
                threadIdx = {t, 0, 0};
                blockIdx = {row, 0, 0};
                loupe_select_rows(values.data(), n, d, k, cap, indices.data(), chosen.data(), counts.data());
            });
        }
        for (auto &thread : threads) thread.join();
    }
    FILE *out = std::fopen(argv[2], "wb");
    if (!out) return 2;
    std::fwrite(counts.data(), sizeof(uint32_t), counts.size(), out);
    std::fwrite(indices.data(), sizeof(uint32_t), indices.size(), out);
    std::fwrite(chosen.data(), sizeof(float), chosen.size(), out);
    std::fclose(out);
    return 0;
}
