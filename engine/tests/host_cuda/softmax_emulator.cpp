// The attention softmax kernel (src/model/attention_softmax.cu) on the CPU (cuda_on_cpu.h).
//
//   c++ -std=c++20 -O1 -pthread -DKERNEL='"attention_softmax.cu"' softmax_emulator.cpp -o emulator
//   emulator INPUT OUTPUT
// INPUT: u32 bf16 (0: f32 scores, 1: bf16), batch, heads, seq, kv_len, offset, f32 scale,
// then `batch` u32 lengths, then batch*heads*seq*kv_len scores (f32, or bf16 as u16).
// OUTPUT: the probabilities, in the scores' type.

#include "cuda_on_cpu.h"

#include KERNEL

template <typename T>
static int run(FILE *in, FILE *out, uint32_t batch, uint32_t heads, uint32_t seq, uint32_t kv_len, uint32_t offset, float scale) {
    std::vector<uint32_t> lengths(batch);
    if (std::fread(lengths.data(), sizeof(uint32_t), batch, in) != batch) return 2;
    const uint32_t rows = batch * heads * seq;
    std::vector<T> scores((size_t)rows * kv_len), probs((size_t)rows * kv_len);
    if (std::fread(scores.data(), sizeof(T), scores.size(), in) != scores.size()) return 2;
    const uint32_t blocks = (rows + WARPS - 1) / WARPS;
    launch(blocks, WARPS * WARP, [&] {
        if constexpr (sizeof(T) == 4) {
            loupe_masked_softmax_f32(scores.data(), probs.data(), rows, kv_len, seq, heads * seq, lengths.data(), offset, scale);
        } else {
            loupe_masked_softmax_bf16(scores.data(), probs.data(), rows, kv_len, seq, heads * seq, lengths.data(), offset, scale);
        }
    });
    std::fwrite(probs.data(), sizeof(T), probs.size(), out);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: emulator INPUT OUTPUT\n");
        return 2;
    }
    FILE *in = std::fopen(argv[1], "rb");
    FILE *out = std::fopen(argv[2], "wb");
    if (!in || !out) return 2;
    uint32_t header[6];
    float scale;
    if (std::fread(header, sizeof(uint32_t), 6, in) != 6 || std::fread(&scale, sizeof(float), 1, in) != 1) return 2;
    const int status = header[0] ? run<unsigned short>(in, out, header[1], header[2], header[3], header[4], header[5], scale)
                                 : run<float>(in, out, header[1], header[2], header[3], header[4], header[5], scale);
    std::fclose(in);
    std::fclose(out);
    return status;
}
