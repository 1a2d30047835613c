// Sparse codes from dense rows on the GPU: one block per row (token), so that only the active
// latents leave the device (k pairs a token instead of d_sae floats).
//
// loupe_select_rows(values [n, d] f32, n, d, k, cap, out_index [n * cap] u32,
//                   out_value [n * cap] f32, out_count [n] u32, out_offset [n] u32,
//                   packed_used [1] u32, zeroed by the caller)
//   k > 0: the k largest values of the row (TopK), then ReLU, zeros dropped (as
//          engine/src/dictionary/activation.rs `top_k`); ties at the k-th value go to the
//          lowest indices. cap must be >= k.
//   k = 0: every non-zero value of the row (an activation already applied).
// Either way out_count holds how many latents the row chose. A row of at most `cap` claims
// that many slots of the packed outputs (an atomic add on packed_used: rows are packed in
// the order blocks finish, each row's latents contiguous and in index order, at
// out_offset[row]), so that the host copies back packed_used pairs, not n * cap. A row of
// more than `cap` writes nothing (out_offset = 0xffffffff): the caller reads it densely.
//
// Selection is a radix select on the values' order-preserving 32-bit keys: four passes of
// 8 bits, each a 256-bin histogram in shared memory, find the k-th largest key exactly.
// Each thread owns a contiguous segment of the row, so block-wide prefix sums of the
// per-thread counts give every chosen latent its place in index order.

#define THREADS 256

// Order-preserving map of a float to an unsigned key (larger float, larger key); NaN maps to
// 0, below every number, so it is never chosen over one.
__device__ __forceinline__ unsigned int order_key(float v) {
    if (v != v) return 0u;
    unsigned int u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum of one value per thread; returns this thread's prefix and sets *total.
__device__ unsigned int block_exclusive_scan(unsigned int value, unsigned int *scratch, unsigned int *total) {
    const unsigned int t = threadIdx.x;
    scratch[t] = value;
    __syncthreads();
    for (unsigned int offset = 1; offset < THREADS; offset <<= 1) {
        unsigned int add = t >= offset ? scratch[t - offset] : 0u;
        __syncthreads();
        scratch[t] += add;
        __syncthreads();
    }
    unsigned int inclusive = scratch[t];
    *total = scratch[THREADS - 1];
    __syncthreads();
    return inclusive - value;
}

// Whether a value is chosen: top-k mode (take > 0), above the threshold key or one of the
// first `ties` equal to it (*rank counts this thread's ties so far, across the block), and
// positive after ReLU; threshold mode (take = 0), non-zero.
__device__ __forceinline__ bool is_chosen(float x, unsigned int take, unsigned int threshold, unsigned int ties, unsigned int *rank) {
    if (take == 0) return x != 0.0f;
    unsigned int key = order_key(x);
    bool chosen = key > threshold || (key == threshold && (*rank)++ < ties);
    return chosen && x > 0.0f;
}

extern "C" __global__ void loupe_select_rows(
    const float *__restrict__ values, const unsigned int n, const unsigned int d, const unsigned int k, const unsigned int cap,
    unsigned int *__restrict__ out_index, float *__restrict__ out_value, unsigned int *__restrict__ out_count,
    unsigned int *__restrict__ out_offset, unsigned int *__restrict__ packed_used) {
    __shared__ unsigned int histogram[256];
    __shared__ unsigned int packed_at;
    __shared__ unsigned int scratch[THREADS];
    __shared__ unsigned int threshold_key;
    __shared__ unsigned int ties_wanted;

    const unsigned int row = blockIdx.x;
    if (row >= n) return;
    const unsigned int t = threadIdx.x;
    const float *v = values + (size_t)row * d;
    const unsigned int segment = (d + THREADS - 1) / THREADS;
    const unsigned int begin = min(d, t * segment);
    const unsigned int end = min(d, begin + segment);
    const unsigned int take = k < d ? k : d;

    // The k-th largest key (threshold) and how many latents equal to it are chosen.
    if (take > 0) {
        unsigned int prefix = 0u, mask = 0u, wanted = take;
        for (int shift = 24; shift >= 0; shift -= 8) {
            histogram[t] = 0u;  // THREADS == 256 bins
            __syncthreads();
            for (unsigned int i = begin; i < end; ++i) {
                unsigned int key = order_key(v[i]);
                if ((key & mask) == prefix) atomicAdd(&histogram[(key >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (t == 0) {
                unsigned int above = 0u;
                for (int bin = 255; bin >= 0; --bin) {
                    if (above + histogram[bin] >= wanted) {
                        prefix |= (unsigned int)bin << shift;
                        wanted -= above;
                        break;
                    }
                    above += histogram[bin];
                }
                threshold_key = prefix;
                ties_wanted = wanted;
            }
            __syncthreads();
            prefix = threshold_key;
            wanted = ties_wanted;
            mask |= 255u << shift;
        }
    }
    const unsigned int threshold = threshold_key;
    const unsigned int ties = ties_wanted;

    // This thread's ties, ranked across the block: the lowest-indexed ones are chosen.
    unsigned int my_ties = 0u;
    if (take > 0) {
        for (unsigned int i = begin; i < end; ++i) my_ties += order_key(v[i]) == threshold;
    }
    unsigned int tie_total;
    unsigned int tie_rank = block_exclusive_scan(my_ties, scratch, &tie_total);

    // Chosen and positive (after ReLU), in this thread's segment.
    unsigned int mine = 0u;
    {
        unsigned int rank = tie_rank;
        for (unsigned int i = begin; i < end; ++i) mine += is_chosen(v[i], take, threshold, ties, &rank);
    }
    unsigned int total;
    unsigned int at = block_exclusive_scan(mine, scratch, &total);

    if (t == 0) {
        packed_at = total <= cap ? atomicAdd(packed_used, total) : 0xffffffffu;
        out_count[row] = total;
        out_offset[row] = packed_at;
    }
    __syncthreads();
    if (total > cap) return;

    const unsigned int base = packed_at;
    unsigned int rank = tie_rank;
    for (unsigned int i = begin; i < end; ++i) {
        float x = v[i];
        if (is_chosen(x, take, threshold, ties, &rank)) {
            out_index[base + at] = i;
            out_value[base + at] = x;
            ++at;
        }
    }
}
