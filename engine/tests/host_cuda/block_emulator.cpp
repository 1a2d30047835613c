// The selection kernel (src/dictionary/select.cu) on the CPU (cuda_on_cpu.h).
//
//   c++ -std=c++20 -O1 -pthread -DKERNEL='"select.cu"' block_emulator.cpp -o emulator
//   emulator INPUT OUTPUT
// INPUT: u32 n, d, k, cap, then n*d f32 (row-major). OUTPUT: n u32 counts, n u32 offsets, the
// u32 packed_used, n*cap u32 indices and n*cap f32 values (loupe_select_rows' outputs).

#include "cuda_on_cpu.h"

#include KERNEL

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
    std::vector<uint32_t> counts(n), offsets(n), indices((size_t)n * cap);
    std::vector<float> chosen((size_t)n * cap);
    uint32_t packed_used = 0;
    launch(n, THREADS, [&] { loupe_select_rows(values.data(), n, d, k, cap, indices.data(), chosen.data(), counts.data(), offsets.data(), &packed_used); });
    FILE *out = std::fopen(argv[2], "wb");
    if (!out) return 2;
    std::fwrite(counts.data(), sizeof(uint32_t), counts.size(), out);
    std::fwrite(offsets.data(), sizeof(uint32_t), offsets.size(), out);
    std::fwrite(&packed_used, sizeof(uint32_t), 1, out);
    std::fwrite(indices.data(), sizeof(uint32_t), indices.size(), out);
    std::fwrite(chosen.data(), sizeof(float), chosen.size(), out);
    std::fclose(out);
    return 0;
}
