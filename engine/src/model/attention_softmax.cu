// Attention probabilities on the GPU in one pass over the scores: scale, causal and padding
// mask, softmax in f32, and the probabilities written in the scores' dtype. The generic
// candle ops it replaces made an f32 copy of the scores, scaled, masked and softmaxed it in
// three more passes and converted the result back: ~46 bytes of memory traffic a score
// against 4 here (bf16 in, bf16 out), on the largest tensor of a batch.
//
// loupe_masked_softmax_{f32,bf16}(scores [rows, kv_len], probs [rows, kv_len], rows, kv_len,
//                                 seq, rows_per_seq, lengths [batch] u32, offset, scale)
//   Row r is query i = r % seq of sequence b = r / rows_per_seq (rows_per_seq = heads * seq);
//   it sees keys j < min(offset + i + 1, offset + lengths[b], kv_len) (the same rule as the
//   CPU kernel in cpu_ops.rs) and writes 0 for the others.
//
// One warp per row, WARPS rows a block; lanes stride the row, and warp shuffles reduce the
// row's maximum and sum. bf16 is carried as its 16 bits (unsigned short) and converted here,
// rounding to nearest even, as the host's `half::bf16::from_f32`.

#define WARP 32
#define WARPS 8
#define NEG_INF __uint_as_float(0xff800000u)

__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float load_value(const float *p) { return *p; }
__device__ __forceinline__ float load_value(const unsigned short *p) { return bf16_to_f32(*p); }
__device__ __forceinline__ void store_value(float *p, float v) { *p = v; }
__device__ __forceinline__ void store_value(unsigned short *p, float v) { *p = f32_to_bf16(v); }

__device__ __forceinline__ float warp_max(float v) {
    for (int lane_mask = WARP / 2; lane_mask > 0; lane_mask >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, lane_mask));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int lane_mask = WARP / 2; lane_mask > 0; lane_mask >>= 1) v += __shfl_xor_sync(0xffffffffu, v, lane_mask);
    return v;
}

template <typename T>
__device__ void masked_softmax_rows(const T *__restrict__ scores, T *__restrict__ probs, unsigned int rows, unsigned int kv_len, unsigned int seq,
                                    unsigned int rows_per_seq, const unsigned int *__restrict__ lengths, unsigned int offset, float scale) {
    const unsigned int lane = threadIdx.x % WARP;
    const unsigned long long row = (unsigned long long)blockIdx.x * WARPS + threadIdx.x / WARP;
    // Every lane of a block runs the shuffles below, rows past the end included (they see
    // no keys and write nothing), so that the warps stay converged.
    const bool real = row < rows;
    unsigned int visible = 0u;
    if (real) {
        const unsigned int i = (unsigned int)(row % seq);
        const unsigned int b = (unsigned int)(row / rows_per_seq);
        visible = min(min(offset + i + 1u, offset + lengths[b]), kv_len);
    }
    const T *in = scores + (real ? row : 0ull) * kv_len;
    T *out = probs + (real ? row : 0ull) * kv_len;

    float largest = NEG_INF;
    for (unsigned int j = lane; j < visible; j += WARP) largest = fmaxf(largest, load_value(in + j) * scale);
    largest = warp_max(largest);
    float sum = 0.0f;
    for (unsigned int j = lane; j < visible; j += WARP) sum += expf(load_value(in + j) * scale - largest);
    sum = warp_sum(sum);
    if (!real) return;
    const float inverse = 1.0f / sum;
    for (unsigned int j = lane; j < kv_len; j += WARP) store_value(out + j, j < visible ? expf(load_value(in + j) * scale - largest) * inverse : 0.0f);
}

extern "C" __global__ void loupe_masked_softmax_f32(const float *__restrict__ scores, float *__restrict__ probs, const unsigned int rows, const unsigned int kv_len,
                                                    const unsigned int seq, const unsigned int rows_per_seq, const unsigned int *__restrict__ lengths,
                                                    const unsigned int offset, const float scale) {
    masked_softmax_rows(scores, probs, rows, kv_len, seq, rows_per_seq, lengths, offset, scale);
}

extern "C" __global__ void loupe_masked_softmax_bf16(const unsigned short *__restrict__ scores, unsigned short *__restrict__ probs, const unsigned int rows,
                                                     const unsigned int kv_len, const unsigned int seq, const unsigned int rows_per_seq,
                                                     const unsigned int *__restrict__ lengths, const unsigned int offset, const float scale) {
    masked_softmax_rows(scores, probs, rows, kv_len, seq, rows_per_seq, lengths, offset, scale);
}
