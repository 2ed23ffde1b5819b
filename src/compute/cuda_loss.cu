// Token cross-entropy over [rows, vocab] logits (bf16 or f32) in one pass each way,
// compiled at run time by NVRTC (see cuda_loss.rs).
//
// Through burn's ops the loss cast the logits to f32, took the row maxima and the sums
// of exponentials in two reductions, and in the backward pass wrote an f32 softmax, a
// scatter and a cast: at 16k tokens and Llama 3's 128k vocabulary, 35 ms a step for
// what is a read of the logits forward and a read and a write backward. Here:
//
// - loss_rows: one block a row keeps a running maximum and sum of exponentials per
//   thread, combines them over the block in a fixed tree, and writes the
//   row's log-sum-exp and its term weight * (lse - x[target]), both f32.
// - loss_gradient: one block a row writes weight * (softmax(x) - onehot(target)) in the
//   logits' dtype, rounded once from f32.
//
// Every sum runs in an order fixed by the shape alone, so a launch repeats to the bit.

#define THREADS 256

// Running (max, sum of exp(x - max)), with a new chunk's values folded in.
struct Running {
    float m, s;
};

__device__ __forceinline__ Running fold(Running r, const float* x, int n) {
    float chunk_max = r.m;
    for (int i = 0; i < n; ++i) chunk_max = fmaxf(chunk_max, x[i]);
    if (chunk_max == neg_inf()) return r;
    float s = r.s * exp_of(r.m - chunk_max);
    for (int i = 0; i < n; ++i) s += exp_of(x[i] - chunk_max);
    return Running{chunk_max, s};
}

__device__ __forceinline__ Running combine(Running a, Running b) {
    const float m = fmaxf(a.m, b.m);
    if (m == neg_inf()) return a;
    return Running{m, a.s * exp_of(a.m - m) + b.s * exp_of(b.m - m)};
}

// Whether the row can be read 16 bytes at a time: its length a multiple of a load and
// the buffer aligned (rows then are too).
template <class E>
__device__ __forceinline__ bool vectorized(const E* base, long long vocab) {
    return vocab % Vec<E>::N == 0 && ((unsigned long long)base & 15) == 0;
}

// lse[row] and terms[row] = weights[row] * (lse - x[row, targets[row]]), f32. A target
// outside [0, vocab) gives a NaN term rather than a read out of bounds.
template <class E>
__device__ void loss_rows(const E* __restrict__ logits, const int* __restrict__ targets,
                          const float* __restrict__ weights, float* __restrict__ lse, float* __restrict__ terms,
                          long long vocab) {
    __shared__ Running partial[THREADS / 32];
    const long long row = blockIdx.x;
    const E* x = logits + row * vocab;
    Running r{neg_inf(), 0.0f};
    constexpr int N = Vec<E>::N;
    if (vectorized(logits, vocab)) {
        const uint4* v = reinterpret_cast<const uint4*>(x);
        const long long loads = vocab / N;
        long long i = threadIdx.x;
        // Four loads in flight a thread, then their values.
        for (; i + 3 * THREADS < loads; i += 4 * THREADS) {
            uint4 raw[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) raw[k] = v[i + k * THREADS];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                float values[N];
                unpack(raw[k], values, E());
                r = fold(r, values, N);
            }
        }
        for (; i < loads; i += THREADS) {
            float values[N];
            unpack(v[i], values, E());
            r = fold(r, values, N);
        }
    } else {
        for (long long i = threadIdx.x; i < vocab; i += THREADS) {
            float value = to_float(x[i]);
            r = fold(r, &value, 1);
        }
    }
    // The block's 256 pairs combined in a fixed tree: within each warp by shuffles,
    // then the eight warps' results by the first warp.
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
        Running other{__shfl_xor_sync(0xffffffff, r.m, offset), __shfl_xor_sync(0xffffffff, r.s, offset)};
        r = combine(r, other);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = r;
    __syncthreads();
    if (warp == 0) {
        r = lane < THREADS / 32 ? partial[lane] : Running{neg_inf(), 0.0f};
#pragma unroll
        for (int offset = 4; offset > 0; offset /= 2) {
            Running other{__shfl_xor_sync(0xffffffff, r.m, offset), __shfl_xor_sync(0xffffffff, r.s, offset)};
            r = combine(r, other);
        }
        if (lane == 0) {
            const float row_lse = r.m == neg_inf() ? neg_inf() : r.m + logf(r.s);
            const int target = targets[row];
            const float picked = target >= 0 && target < vocab ? to_float(x[target]) : __int_as_float(0x7fc00000);
            lse[row] = row_lse;
            terms[row] = (row_lse - picked) * weights[row];
        }
    }
}

// dlogits[row, i] = row_weight[row] * (exp(x[row, i] - lse[row]) - [i == targets[row]]),
// computed in f32 and rounded once to the logits' dtype.
template <class E>
__device__ void loss_gradient(const E* __restrict__ logits, const float* __restrict__ lse,
                              const int* __restrict__ targets, const float* __restrict__ row_weight,
                              E* __restrict__ dlogits, long long vocab) {
    const long long row = blockIdx.x;
    const E* x = logits + row * vocab;
    E* dx = dlogits + row * vocab;
    const float row_lse = lse[row], weight = row_weight[row];
    const long long target = targets[row];
    constexpr int N = Vec<E>::N;
    if (vectorized(logits, vocab) && vectorized(dlogits, vocab)) {
        const uint4* v = reinterpret_cast<const uint4*>(x);
        uint4* out = reinterpret_cast<uint4*>(dx);
        const long long loads = vocab / N;
        for (long long i = threadIdx.x; i < loads; i += THREADS) {
            float values[N];
            unpack(v[i], values, E());
            union {
                uint4 raw;
                E e[N];
            } packed;
#pragma unroll
            for (int j = 0; j < N; ++j) {
                float g = exp_of(values[j] - row_lse) * weight;
                if (i * N + j == target) g += -weight;
                store(&packed.e[j], g);
            }
            out[i] = packed.raw;
        }
    } else {
        for (long long i = threadIdx.x; i < vocab; i += THREADS) {
            float g = exp_of(to_float(x[i]) - row_lse) * weight;
            if (i == target) g += -weight;
            store(&dx[i], g);
        }
    }
}

#define ENTRY_POINTS(NAME, E)                                                                                 \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                    \
        loss_rows_##NAME(const E* logits, const int* targets, const float* weights, float* lse, float* terms, \
                         long long vocab) {                                                                   \
        loss_rows<E>(logits, targets, weights, lse, terms, vocab);                                            \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                    \
        loss_gradient_##NAME(const E* logits, const float* lse, const int* targets, const float* row_weight,  \
                             E* dlogits, long long vocab) {                                                   \
        loss_gradient<E>(logits, lse, targets, row_weight, dlogits, vocab);                                   \
    }

ENTRY_POINTS(bf16, unsigned short)
ENTRY_POINTS(f32, float)
