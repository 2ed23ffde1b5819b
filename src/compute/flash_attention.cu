// Causal flash attention for training, bf16 in and out, f32 arithmetic, on tensor
// cores through WMMA. Compiled at run time by NVRTC (see flash_attention.rs).
//
// Layouts: q, k, v and the output's gradient are [batch, heads, rows, D] with any
// batch, head and row strides (in elements) and unit stride along D. Outputs are
// contiguous. `lse` holds each query row's log2-sum-exp2 of its scaled scores, so the
// backward kernels recompute probabilities as exp2(s * scale_log2 - lse) with no
// reduction. Query i (of `seq`) sees key j (of `keys`) when j <= i + keys - seq.
//
// Each block has four warps and handles a tile of 64 rows, 16 per warp. Products go
// through 16x16x16 WMMA fragments; scores go through a per-warp f32 scratch in
// shared memory, where two lanes per row apply the mask and the softmax.
//
// No atomics anywhere: dQ has its own kernel (over query tiles) and dK, dV theirs
// (over key tiles), so a step's gradients are the same bits on every run.

#include <mma.h>
#include <cuda_bf16.h>

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

#define TILE 64
#define WARPS 4
#define THREADS (WARPS * 32)

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> FragAT;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragB;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBT;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// Pitches: rows padded so that consecutive rows fall on different banks; each keeps
// the 32-byte alignment WMMA needs at every 16-row, 16-column fragment.
template <int D> struct Pitch {
    static const int tile = D + 8;      // bf16 [64][D] tiles
    static const int probs = TILE + 8;  // bf16 [16][64] per warp
    static const int scratch = (D > TILE ? D : TILE) + 4;  // f32 [16][max(D, 64)] per warp
};

// Copies rows [0, valid) of a [64][D] tile from global memory (row stride in
// elements) into shared memory, zero-filling the rest, 16 bytes per thread access.
template <int D>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, long long row_stride, int valid) {
    const int chunks = D / 8;
    for (int c = threadIdx.x; c < TILE * chunks; c += THREADS) {
        const int r = c / chunks, part = c % chunks;
        uint4 value = make_uint4(0, 0, 0, 0);
        if (r < valid) value = *reinterpret_cast<const uint4*>(src + r * row_stride + part * 8);
        *reinterpret_cast<uint4*>(dst + r * Pitch<D>::tile + part * 8) = value;
    }
}

struct Strides {
    long long batch, head, row;
};

// One past the last key that any row of the query tile starting at q0 sees.
__device__ __forceinline__ int key_end(int q0, int seq, int keys) {
    return min(keys, min(q0 + TILE, seq) + keys - seq);
}

// The key and value tiles that start at key k0, from one kv head's rows.
template <int D>
__device__ __forceinline__ void load_kv(bf16* k_tile, bf16* v_tile, const bf16* k, Strides ks, const bf16* v,
                                        Strides vs, int k0, int keys) {
    const int valid = min(TILE, keys - k0);
    load_tile<D>(k_tile, k + k0 * ks.row, ks.row, valid);
    load_tile<D>(v_tile, v + k0 * vs.row, vs.row, valid);
}

// This warp's 16 rows of a shared [64][D] tile as D/16 row-major A fragments.
template <int D>
__device__ __forceinline__ void load_rows(FragA* frags, const bf16* tile, int warp) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        wmma::load_matrix_sync(frags[kk], tile + warp * 16 * Pitch<D>::tile + kk * 16, Pitch<D>::tile);
}

// scratch[16][64] = rows (16 x D, A fragments) times the transpose of a shared
// [64][D] tile: each row's dot product with each of the tile's 64 rows.
template <int D>
__device__ __forceinline__ void rows_times_tile_t(float* scratch, const FragA* rows, const bf16* tile) {
#pragma unroll
    for (int n = 0; n < TILE / 16; ++n) {
        FragC acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            FragBT b;
            wmma::load_matrix_sync(b, tile + n * 16 * Pitch<D>::tile + kk * 16, Pitch<D>::tile);
            wmma::mma_sync(acc, rows[kk], b, acc);
        }
        wmma::store_matrix_sync(scratch + n * 16, acc, Pitch<D>::scratch, wmma::mem_row_major);
    }
}

// acc (16 x D) += probs (16 x 64, bf16, row-major in shared memory) times a shared
// [64][D] tile.
template <int D>
__device__ __forceinline__ void accumulate_probs_times_tile(FragC* acc, const bf16* probs, const bf16* tile) {
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) {
        FragA a;
        wmma::load_matrix_sync(a, probs + kk * 16, Pitch<D>::probs);
#pragma unroll
        for (int n = 0; n < D / 16; ++n) {
            FragB b;
            wmma::load_matrix_sync(b, tile + kk * 16 * Pitch<D>::tile + n * 16, Pitch<D>::tile);
            wmma::mma_sync(acc[n], a, b, acc[n]);
        }
    }
}

// Writes a warp's 16 x D accumulators as bf16 rows [row0, row0 + 16) of a contiguous
// [rows][D] matrix, through the warp's scratch; rows at or past `rows` are skipped.
template <int D>
__device__ __forceinline__ void store_rows(bf16* out, const FragC* acc, float* scratch, int row0, int rows, float factor) {
#pragma unroll
    for (int n = 0; n < D / 16; ++n)
        wmma::store_matrix_sync(scratch + n * 16, acc[n], Pitch<D>::scratch, wmma::mem_row_major);
    __syncwarp();
    const int lane = threadIdx.x % 32;
    for (int i = lane; i < 16 * D / 2; i += 32) {
        const int r = i / (D / 2), c = (i % (D / 2)) * 2;
        if (row0 + r < rows) {
            const float* s = scratch + r * Pitch<D>::scratch + c;
            *reinterpret_cast<__nv_bfloat162*>(out + (long long)(row0 + r) * D + c) =
                __floats2bfloat162_rn(s[0] * factor, s[1] * factor);
        }
    }
    __syncwarp();
}

// Forward: out = softmax(scale q kᵀ, causal) v and each row's lse. Grid: (query
// tiles, batch * heads), the longest rows first.
template <int D>
__device__ void forward(const bf16* __restrict__ q, Strides qs, const bf16* __restrict__ k, Strides ks,
                        const bf16* __restrict__ v, Strides vs, bf16* __restrict__ out, float* __restrict__ lse,
                        int heads, int kv_heads, int seq, int keys, float scale_log2) {
    extern __shared__ __align__(128) unsigned char smem[];
    typedef Pitch<D> P;
    bf16* k_tile = reinterpret_cast<bf16*>(smem);
    bf16* v_tile = k_tile + TILE * P::tile;
    float* scratch_all = reinterpret_cast<float*>(v_tile + TILE * P::tile);
    bf16* probs_all = reinterpret_cast<bf16*>(scratch_all + WARPS * 16 * P::scratch);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int tile = gridDim.x - 1 - blockIdx.x;
    const int batch = blockIdx.y / heads, head = blockIdx.y % heads;
    const int kv_head = head / (heads / kv_heads);
    const int q0 = tile * TILE;
    const int offset = keys - seq;
    float* scratch = scratch_all + warp * 16 * P::scratch;
    bf16* probs = probs_all + warp * 16 * P::probs;

    load_tile<D>(k_tile, q + batch * qs.batch + head * qs.head + q0 * qs.row, qs.row, min(TILE, seq - q0));
    __syncthreads();
    FragA q_rows[D / 16];
    load_rows<D>(q_rows, k_tile, warp);
    __syncthreads();

    // Two lanes per row: lane/2 is the row, lane%2 the half of the columns.
    const int r = lane >> 1, half = lane & 1;
    const int row = q0 + warp * 16 + r;
    float m = neg_inf(), l = 0.0f;
    float acc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) acc[i] = 0.0f;

    const bf16* k_base = k + batch * ks.batch + kv_head * ks.head;
    const bf16* v_base = v + batch * vs.batch + kv_head * vs.head;
    for (int k0 = 0; k0 < key_end(q0, seq, keys); k0 += TILE) {
        load_kv<D>(k_tile, v_tile, k_base, ks, v_base, vs, k0, keys);
        __syncthreads();
        rows_times_tile_t<D>(scratch, q_rows, k_tile);
        __syncwarp();

        const float* s = scratch + r * P::scratch + half * 32;
        float x[32];
        float tile_max = neg_inf();
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const int key = k0 + half * 32 + j;
            x[j] = (key < keys && key <= row + offset) ? s[j] * scale_log2 : neg_inf();
            tile_max = fmaxf(tile_max, x[j]);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        const float base = m_new == neg_inf() ? 0.0f : m_new;
        const float rescale = exp2f(m - base);
        float sum = 0.0f;
        bf16* p = probs + r * P::probs + half * 32;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const float e = exp2f(x[j] - base);
            sum += e;
            p[j] = __float2bfloat16(e);
        }
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        l = l * rescale + sum;
        m = m_new;
        __syncwarp();

        FragC pv[D / 16];
#pragma unroll
        for (int n = 0; n < D / 16; ++n) wmma::fill_fragment(pv[n], 0.0f);
        accumulate_probs_times_tile<D>(pv, probs, v_tile);
#pragma unroll
        for (int n = 0; n < D / 16; ++n)
            wmma::store_matrix_sync(scratch + n * 16, pv[n], P::scratch, wmma::mem_row_major);
        __syncwarp();
        const float* o = scratch + r * P::scratch + half * (D / 2);
#pragma unroll
        for (int i = 0; i < D / 2; ++i) acc[i] = acc[i] * rescale + o[i];
        __syncthreads();
    }

    if (row < seq) {
        const long long index = ((long long)blockIdx.y) * seq + row;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        bf16* o = out + index * D + half * (D / 2);
#pragma unroll
        for (int i = 0; i < D / 2; i += 2)
            *reinterpret_cast<__nv_bfloat162*>(o + i) = __floats2bfloat162_rn(acc[i] * inv, acc[i + 1] * inv);
        if (half == 0) lse[index] = l > 0.0f ? m + log2f(l) : pos_inf();
    }
}

// dQ, and each row's delta = sum(dO * O) for the dK/dV kernel. Grid as the forward's.
template <int D>
__device__ void backward_dq(const bf16* __restrict__ q, Strides qs, const bf16* __restrict__ k, Strides ks,
                            const bf16* __restrict__ v, Strides vs, const bf16* __restrict__ out,
                            const bf16* __restrict__ dout, Strides dos, const float* __restrict__ lse,
                            float* __restrict__ delta, bf16* __restrict__ dq, int heads, int kv_heads, int seq,
                            int keys, float scale, float scale_log2) {
    extern __shared__ __align__(128) unsigned char smem[];
    typedef Pitch<D> P;
    bf16* k_tile = reinterpret_cast<bf16*>(smem);
    bf16* v_tile = k_tile + TILE * P::tile;
    float* scores_all = reinterpret_cast<float*>(v_tile + TILE * P::tile);
    float* dprobs_all = scores_all + WARPS * 16 * P::scratch;
    bf16* dscores_all = reinterpret_cast<bf16*>(dprobs_all + WARPS * 16 * P::scratch);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int tile = gridDim.x - 1 - blockIdx.x;
    const int batch = blockIdx.y / heads, head = blockIdx.y % heads;
    const int kv_head = head / (heads / kv_heads);
    const int q0 = tile * TILE;
    const int offset = keys - seq;
    const int valid_rows = min(TILE, seq - q0);
    float* scores = scores_all + warp * 16 * P::scratch;
    float* dprobs = dprobs_all + warp * 16 * P::scratch;
    bf16* dscores = dscores_all + warp * 16 * P::probs;

    load_tile<D>(k_tile, q + batch * qs.batch + head * qs.head + q0 * qs.row, qs.row, valid_rows);
    load_tile<D>(v_tile, dout + batch * dos.batch + head * dos.head + q0 * dos.row, dos.row, valid_rows);
    __syncthreads();
    FragA q_rows[D / 16], do_rows[D / 16];
    load_rows<D>(q_rows, k_tile, warp);
    load_rows<D>(do_rows, v_tile, warp);

    const int r = lane >> 1, half = lane & 1;
    const int row = q0 + warp * 16 + r;
    const long long index = ((long long)blockIdx.y) * seq + row;
    // delta = sum over D of dO * O, from the staged dO tile and O in global memory.
    float row_delta = 0.0f, row_lse = pos_inf();
    if (row < seq) {
        const bf16* o = out + index * D + half * (D / 2);
        const bf16* g = v_tile + (warp * 16 + r) * P::tile + half * (D / 2);
        for (int i = 0; i < D / 2; ++i) row_delta += __bfloat162float(o[i]) * __bfloat162float(g[i]);
        row_lse = lse[index];
    }
    row_delta += __shfl_xor_sync(0xffffffff, row_delta, 1);
    if (row < seq && half == 0) delta[index] = row_delta;
    __syncthreads();

    FragC dq_acc[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; ++n) wmma::fill_fragment(dq_acc[n], 0.0f);

    const bf16* k_base = k + batch * ks.batch + kv_head * ks.head;
    const bf16* v_base = v + batch * vs.batch + kv_head * vs.head;
    for (int k0 = 0; k0 < key_end(q0, seq, keys); k0 += TILE) {
        load_kv<D>(k_tile, v_tile, k_base, ks, v_base, vs, k0, keys);
        __syncthreads();
        rows_times_tile_t<D>(scores, q_rows, k_tile);
        rows_times_tile_t<D>(dprobs, do_rows, v_tile);
        __syncwarp();
        const float* s = scores + r * P::scratch + half * 32;
        const float* dp = dprobs + r * P::scratch + half * 32;
        bf16* ds = dscores + r * P::probs + half * 32;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const int key = k0 + half * 32 + j;
            const bool seen = key < keys && key <= row + offset;
            const float p = seen ? exp2f(s[j] * scale_log2 - row_lse) : 0.0f;
            ds[j] = __float2bfloat16(p * (dp[j] - row_delta) * scale);
        }
        __syncwarp();
        accumulate_probs_times_tile<D>(dq_acc, dscores, k_tile);
        __syncthreads();
    }
    store_rows<D>(dq + ((long long)blockIdx.y) * seq * D, dq_acc, scores, q0 + warp * 16, seq, 1.0f);
}

// dK and dV. Grid: (key tiles, batch * kv_heads), the keys seen by most queries first;
// each block sums over the query heads its kv head serves.
template <int D>
__device__ void backward_dkv(const bf16* __restrict__ q, Strides qs, const bf16* __restrict__ k, Strides ks,
                             const bf16* __restrict__ v, Strides vs, const bf16* __restrict__ dout, Strides dos,
                             const float* __restrict__ lse, const float* __restrict__ delta, bf16* __restrict__ dk,
                             bf16* __restrict__ dv, int heads, int kv_heads, int seq, int keys, float scale,
                             float scale_log2) {
    extern __shared__ __align__(128) unsigned char smem[];
    typedef Pitch<D> P;
    bf16* q_tile = reinterpret_cast<bf16*>(smem);
    bf16* do_tile = q_tile + TILE * P::tile;
    float* scores_all = reinterpret_cast<float*>(do_tile + TILE * P::tile);
    float* dprobs_all = scores_all + WARPS * 16 * P::scratch;
    bf16* probs_all = reinterpret_cast<bf16*>(dprobs_all + WARPS * 16 * P::scratch);
    bf16* dscores_all = probs_all + WARPS * 16 * P::probs;
    float* tile_lse = reinterpret_cast<float*>(dscores_all + WARPS * 16 * P::probs);
    float* tile_delta = tile_lse + TILE;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int k0 = blockIdx.x * TILE;
    const int batch = blockIdx.y / kv_heads, kv_head = blockIdx.y % kv_heads;
    const int groups = heads / kv_heads;
    const int offset = keys - seq;
    const int valid_keys = min(TILE, keys - k0);
    float* scores = scores_all + warp * 16 * P::scratch;
    float* dprobs = dprobs_all + warp * 16 * P::scratch;
    bf16* probs = probs_all + warp * 16 * P::probs;
    bf16* dscores = dscores_all + warp * 16 * P::probs;

    load_tile<D>(q_tile, k + batch * ks.batch + kv_head * ks.head + k0 * ks.row, ks.row, valid_keys);
    load_tile<D>(do_tile, v + batch * vs.batch + kv_head * vs.head + k0 * vs.row, vs.row, valid_keys);
    __syncthreads();
    FragA k_rows[D / 16], v_rows[D / 16];
    load_rows<D>(k_rows, q_tile, warp);
    load_rows<D>(v_rows, do_tile, warp);
    __syncthreads();

    FragC dk_acc[D / 16], dv_acc[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
        wmma::fill_fragment(dk_acc[n], 0.0f);
        wmma::fill_fragment(dv_acc[n], 0.0f);
    }

    const int r = lane >> 1, half = lane & 1;
    const int key = k0 + warp * 16 + r;
    // The first query that sees this tile's first key.
    const int first_row = max(0, k0 - offset);
    for (int g = 0; g < groups; ++g) {
        const int head = kv_head * groups + g;
        const long long rows_base = ((long long)batch * heads + head) * seq;
        for (int q0 = (first_row / TILE) * TILE; q0 < seq; q0 += TILE) {
            const int valid_rows = min(TILE, seq - q0);
            load_tile<D>(q_tile, q + batch * qs.batch + head * qs.head + q0 * qs.row, qs.row, valid_rows);
            load_tile<D>(do_tile, dout + batch * dos.batch + head * dos.head + q0 * dos.row, dos.row, valid_rows);
            for (int i = threadIdx.x; i < TILE; i += THREADS) {
                tile_lse[i] = i < valid_rows ? lse[rows_base + q0 + i] : pos_inf();
                tile_delta[i] = i < valid_rows ? delta[rows_base + q0 + i] : 0.0f;
            }
            __syncthreads();
            // Transposed scores: this warp's 16 keys against the tile's 64 queries.
            rows_times_tile_t<D>(scores, k_rows, q_tile);
            rows_times_tile_t<D>(dprobs, v_rows, do_tile);
            __syncwarp();
            const float* s = scores + r * P::scratch + half * 32;
            const float* dp = dprobs + r * P::scratch + half * 32;
            bf16* p_out = probs + r * P::probs + half * 32;
            bf16* ds_out = dscores + r * P::probs + half * 32;
#pragma unroll
            for (int j = 0; j < 32; ++j) {
                const int c = half * 32 + j;
                const int row = q0 + c;
                const bool seen = key < keys && row < seq && key <= row + offset;
                const float p = seen ? exp2f(s[j] * scale_log2 - tile_lse[c]) : 0.0f;
                p_out[j] = __float2bfloat16(p);
                ds_out[j] = __float2bfloat16(p * (dp[j] - tile_delta[c]) * scale);
            }
            __syncwarp();
            accumulate_probs_times_tile<D>(dv_acc, probs, do_tile);
            accumulate_probs_times_tile<D>(dk_acc, dscores, q_tile);
            __syncthreads();
        }
    }
    const long long out_base = ((long long)blockIdx.y) * keys * D;
    store_rows<D>(dk + out_base, dk_acc, scores, k0 + warp * 16, keys, 1.0f);
    store_rows<D>(dv + out_base, dv_acc, scores, k0 + warp * 16, keys, 1.0f);
}

#define ENTRY_POINTS(D)                                                                                       \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                  \
        flash_forward_##D(const bf16* q, Strides qs, const bf16* k, Strides ks, const bf16* v, Strides vs,   \
                          bf16* out, float* lse, int heads, int kv_heads, int seq, int keys, float scale,    \
                          float scale_log2) {                                                              \
        forward<D>(q, qs, k, ks, v, vs, out, lse, heads, kv_heads, seq, keys, scale_log2);                \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                  \
        flash_backward_dq_##D(const bf16* q, Strides qs, const bf16* k, Strides ks, const bf16* v,          \
                              Strides vs, const bf16* out, const bf16* dout, Strides dos, const float* lse,  \
                              float* delta, bf16* dq, int heads, int kv_heads, int seq, int keys,           \
                              float scale, float scale_log2) {                                             \
        backward_dq<D>(q, qs, k, ks, v, vs, out, dout, dos, lse, delta, dq, heads, kv_heads, seq, keys,    \
                       scale, scale_log2);                                                                 \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                  \
        flash_backward_dkv_##D(const bf16* q, Strides qs, const bf16* k, Strides ks, const bf16* v,         \
                               Strides vs, const bf16* dout, Strides dos, const float* lse,                \
                               const float* delta, bf16* dk, bf16* dv, int heads, int kv_heads, int seq,    \
                               int keys, float scale, float scale_log2) {                                  \
        backward_dkv<D>(q, qs, k, ks, v, vs, dout, dos, lse, delta, dk, dv, heads, kv_heads, seq, keys,    \
                        scale, scale_log2);                                                                \
    }

ENTRY_POINTS(32)
ENTRY_POINTS(64)
ENTRY_POINTS(128)
