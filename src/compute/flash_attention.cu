// Causal flash attention for training, bf16 in and out, f32 arithmetic, on tensor
// cores through `mma.sync` (m16n8k16). Compiled at run time by NVRTC (see
// flash_attention.rs).
//
// Layouts: q, k, v and the output's gradient are [batch, heads, rows, D] with any
// batch, head and row strides (in elements) and unit stride along D. Outputs are
// contiguous. `lse` holds each query row's log2-sum-exp2 of its scaled scores, so the
// backward kernels recompute probabilities as exp2(s * scale_log2 - lse) with no
// reduction. Query i (of `seq`) sees key j (of `keys`) when j <= i + keys - seq.
//
// Each block has four warps. A warp owns 16 rows per m-tile (query rows in the forward
// and dQ kernels, keys in the dK/dV kernel) and keeps its scores, probabilities and
// accumulators in registers, in the mma fragment layout: lane l holds rows l/4 and
// l/4 + 8 of each 16-row tile, and columns 2(l%4) and 2(l%4)+1 of each 8-column tile.
// That layout is also the A operand's, so probabilities go from one product into the
// next without leaving registers. The streamed tiles (keys and values, or queries and
// output gradients) pass through shared memory two stages deep by cp.async, and reach
// the tensor cores through ldmatrix.
//
// No atomics anywhere: dQ has its own kernel (over query tiles) and dK, dV theirs
// (over key tiles), so a step's gradients are the same bits on every run.

#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

#define TILE 64
#define WARPS 4
#define THREADS (WARPS * 32)

// Query rows per forward block: two m-tiles a warp where the accumulators fit in
// registers, so that each key fragment read from shared memory feeds two products.
#ifndef FORWARD_MTILES
#define FORWARD_MTILES(D) ((D) <= 64 ? 2 : 1)
#endif

// Dynamic shared memory of each kernel: bf16 tiles of [TILE][D + 8] (the forward's
// query block and two stages of keys and values; the backward's resident pair and two
// stages of the streamed pair) and f32 row vectors.
#define TILE_BYTES(D) (TILE * ((D) + 8) * 2)
#define FORWARD_SHARED(D) ((FORWARD_MTILES(D) + 4) * TILE_BYTES(D))
#define DQ_SHARED(D) (6 * TILE_BYTES(D) + TILE * 4)
#define DKV_SHARED(D) (6 * TILE_BYTES(D) + 4 * TILE * 4)

#ifndef GRAFT_CUDA_EMULATION
__device__ __forceinline__ unsigned shared_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// c (16 x 8, f32) += a (16 x 16, bf16) * b (16 x 8, bf16).
__device__ __forceinline__ void mma(float* c, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Four 8x8 bf16 matrices; lane l gives the address of row l%8 of matrix l/8.
__device__ __forceinline__ void ldmatrix(unsigned* r, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}

// The same, each matrix transposed.
__device__ __forceinline__ void ldmatrix_t(unsigned* r, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}

// 16 bytes from global to shared memory, or 16 zero bytes where `valid` is false
// (then `src` is not read).
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void copies_issued() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most `N` groups of copies are still in flight.
template <int N>
__device__ __forceinline__ void copies_landed() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// 2^x, flushing subnormal results to zero: one MUFU.EX2. (exp2f without fast-math
// adds a rescaling around it to keep subnormals, several instructions a score.)
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ unsigned pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}
#endif

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

// Shared tiles are [rows][D + 8]: the 16-byte pad puts the eight rows an ldmatrix
// reads on different banks.
template <int D> struct Pitch {
    static const int row = D + 8;
};

struct Strides {
    long long batch, head, row;
};

// Starts copying rows [0, valid) of a [ROWS][D] tile from global memory (row stride in
// elements) into shared memory, zero-filling the rest.
template <int D, int ROWS>
__device__ __forceinline__ void fetch_tile(bf16* dst, const bf16* src, long long row_stride, int valid) {
    const int chunks = D / 8;
    for (int c = threadIdx.x; c < ROWS * chunks; c += THREADS) {
        const int r = c / chunks, part = c % chunks;
        const bool ok = r < valid;
        copy16(dst + r * Pitch<D>::row + part * 8, ok ? src + r * row_stride + part * 8 : src, ok);
    }
}

// A query tile's lse (threads 0-63) and delta (64-127) into shared memory, with plain
// loads: rows of [batch * heads, seq] vectors need not be 16-byte aligned. Rows past
// `valid` get lse +inf (probability 0) and delta 0.
__device__ __forceinline__ void fetch_vectors(float* dst, const float* lse, const float* delta, int valid) {
    const int i = threadIdx.x % TILE;
    const bool is_delta = threadIdx.x >= TILE;
    if (threadIdx.x < 2 * TILE)
        dst[threadIdx.x] = i < valid ? (is_delta ? delta : lse)[i] : (is_delta ? 0.0f : pos_inf());
}

// A fragments (16 x 16 each) of rows [row0, row0 + 16) of a shared tile, all D / 16
// blocks of columns.
template <int D>
__device__ __forceinline__ void load_a(unsigned (*a)[4], const bf16* tile, int row0) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        ldmatrix(a[kk], tile + (row0 + lane % 16) * Pitch<D>::row + kk * 16 + (lane / 16) * 8);
}

// B fragments for a product with the transpose of a shared tile (rows as the product's
// columns): columns [n0, n0 + 16) (two 8-column fragments) of the k-block at column k0.
template <int D>
__device__ __forceinline__ void load_b_rows(unsigned* b, const bf16* tile, int n0, int k0) {
    const int lane = threadIdx.x % 32, m = lane / 8;
    ldmatrix(b, tile + (n0 + lane % 8 + 8 * (m / 2)) * Pitch<D>::row + k0 + 8 * (m % 2));
}

// B fragments for a product with a shared tile as it is (rows as the product's inner
// dimension): rows [k0, k0 + 16), columns [n0, n0 + 16) (two 8-column fragments).
template <int D>
__device__ __forceinline__ void load_b_cols(unsigned* b, const bf16* tile, int k0, int n0) {
    const int lane = threadIdx.x % 32, m = lane / 8;
    ldmatrix_t(b, tile + (k0 + lane % 8 + 8 * (m % 2)) * Pitch<D>::row + n0 + 8 * (m / 2));
}

// acc[MT][64 / 8] (scores: each m-tile's 16 rows against a tile's 64 rows) +=
// rows (A fragments, D / 16 per m-tile) times the transpose of a shared [64][D] tile.
template <int D, int MT>
__device__ __forceinline__ void times_tile_t(float (*acc)[TILE / 8][4], unsigned (*rows)[D / 16][4],
                                             const bf16* tile) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int p = 0; p < TILE / 16; ++p) {
            unsigned b[4];
            load_b_rows<D>(b, tile, p * 16, kk * 16);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma(acc[mt][2 * p], rows[mt][kk], b);
                mma(acc[mt][2 * p + 1], rows[mt][kk], b + 2);
            }
        }
    }
}

// acc[MT][D / 8] += probs (A fragments over a tile's 64 rows, 4 per m-tile) times a
// shared [64][D] tile.
template <int D, int MT>
__device__ __forceinline__ void probs_times_tile(float (*acc)[D / 8][4], unsigned (*probs)[TILE / 16][4],
                                                 const bf16* tile) {
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) {
#pragma unroll
        for (int p = 0; p < D / 16; ++p) {
            unsigned b[4];
            load_b_cols<D>(b, tile, kk * 16, p * 16);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma(acc[mt][2 * p], probs[mt][kk], b);
                mma(acc[mt][2 * p + 1], probs[mt][kk], b + 2);
            }
        }
    }
}

// Score accumulators (16 x N a warp) as A fragments (16 x 16 each) in bf16.
template <int N = TILE>
__device__ __forceinline__ void as_a(unsigned (*a)[4], float (*s)[4]) {
#pragma unroll
    for (int kk = 0; kk < N / 16; ++kk) {
        a[kk][0] = pack(s[2 * kk][0], s[2 * kk][1]);
        a[kk][1] = pack(s[2 * kk][2], s[2 * kk][3]);
        a[kk][2] = pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[kk][3] = pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

template <int N>
__device__ __forceinline__ void zero(float (*acc)[4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
}

// Writes 16 rows of accumulators (row0 + lane/4 and + 8, D / 8 fragments) as bf16 rows
// of a contiguous [rows][D] matrix, times each row's factor; rows at or past `rows` are
// skipped.
template <int D>
__device__ __forceinline__ void store_rows(bf16* out, float (*acc)[4], int row0, int rows, float f0,
                                           float f1) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = row0 + g + 8 * h;
        if (row >= rows) continue;
        const float f = h ? f1 : f0;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<__nv_bfloat162*>(out + (long long)row * D + n * 8 + 2 * t) =
                __floats2bfloat162_rn(acc[n][2 * h] * f, acc[n][2 * h + 1] * f);
    }
}

// One past the last key that any of `rows` query rows from q0 sees.
__device__ __forceinline__ int key_end(int q0, int rows, int seq, int keys) {
    return min(keys, min(q0 + rows, seq) + keys - seq);
}

// Forward: out = softmax(scale q kᵀ, causal) v and each row's lse. Grid: (query
// blocks of 64 * MT rows, batch * heads), the longest rows first.
template <int D, int MT>
__device__ void forward(const bf16* __restrict__ q, Strides qs, const bf16* __restrict__ k, Strides ks,
                        const bf16* __restrict__ v, Strides vs, bf16* __restrict__ out, float* __restrict__ lse,
                        int heads, int kv_heads, int seq, int keys, float scale_log2) {
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int P = Pitch<D>::row, ROWS = 64 * MT;
    bf16* q_tile = reinterpret_cast<bf16*>(smem);
    bf16* stages = q_tile + ROWS * P;  // stage s: keys at s * 2 * TILE * P, values after

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int batch = blockIdx.y / heads, head = blockIdx.y % heads;
    const int kv_head = head / (heads / kv_heads);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * ROWS;
    const int offset = keys - seq;
    const int warp_row0 = q0 + warp * 16 * MT;
    const bf16* k_base = k + batch * ks.batch + kv_head * ks.head;
    const bf16* v_base = v + batch * vs.batch + kv_head * vs.head;
    const int tiles = (max(0, key_end(q0, ROWS, seq, keys)) + TILE - 1) / TILE;

    fetch_tile<D, ROWS>(q_tile, q + batch * qs.batch + head * qs.head + q0 * qs.row, qs.row, min(ROWS, seq - q0));
    if (tiles > 0) {
        fetch_tile<D, TILE>(stages, k_base, ks.row, min(TILE, keys));
        fetch_tile<D, TILE>(stages + TILE * P, v_base, vs.row, min(TILE, keys));
    }
    copies_issued();

    unsigned q_frags[MT][D / 16][4];
    float o[MT][D / 8][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        zero<D / 8>(o[mt]);
        m[mt][0] = m[mt][1] = neg_inf();
        l[mt][0] = l[mt][1] = 0.0f;
    }

    for (int i = 0; i < tiles; ++i) {
        const int k0 = i * TILE;
        if (i + 1 < tiles) {
            bf16* next = stages + ((i + 1) & 1) * 2 * TILE * P;
            const int valid = min(TILE, keys - k0 - TILE);
            fetch_tile<D, TILE>(next, k_base + (k0 + TILE) * ks.row, ks.row, valid);
            fetch_tile<D, TILE>(next + TILE * P, v_base + (k0 + TILE) * vs.row, vs.row, valid);
        }
        copies_issued();
        copies_landed<1>();
        __syncthreads();
        if (i == 0) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) load_a<D>(q_frags[mt], q_tile, warp * 16 * MT + mt * 16);
        }
        const bf16* k_tile = stages + (i & 1) * 2 * TILE * P;
        const bf16* v_tile = k_tile + TILE * P;

        float s[MT][TILE / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) zero<TILE / 8>(s[mt]);
        times_tile_t<D, MT>(s, q_frags, k_tile);

        const bool masked = k0 + TILE > keys || k0 + TILE - 1 > warp_row0 + offset;
        unsigned p_frags[MT][TILE / 16][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = warp_row0 + mt * 16 + g + 8 * h;
                // The max of the raw scores, then probabilities as one FFMA and one
                // exp2 each: scale_log2 > 0, so the scaled max is the max scaled.
                float tile_max = neg_inf();
#pragma unroll
                for (int n = 0; n < TILE / 8; ++n)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int key = k0 + n * 8 + 2 * t + e;
                        if (masked && !(key < keys && key <= row + offset)) s[mt][n][2 * h + e] = neg_inf();
                        tile_max = fmaxf(tile_max, s[mt][n][2 * h + e]);
                    }
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 1));
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 2));
                const float m_new = fmaxf(m[mt][h], tile_max * scale_log2);
                const float base = m_new == neg_inf() ? 0.0f : m_new;
                const float rescale = fast_exp2(m[mt][h] - base);
                m[mt][h] = m_new;
                float sum = 0.0f;
#pragma unroll
                for (int n = 0; n < TILE / 8; ++n)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const float p = fast_exp2(fmaf(s[mt][n][2 * h + e], scale_log2, -base));
                        s[mt][n][2 * h + e] = p;
                        sum += p;
                    }
                l[mt][h] = l[mt][h] * rescale + sum;
#pragma unroll
                for (int n = 0; n < D / 8; ++n) {
                    o[mt][n][2 * h] *= rescale;
                    o[mt][n][2 * h + 1] *= rescale;
                }
            }
            as_a(p_frags[mt], s[mt]);
        }
        probs_times_tile<D, MT>(o, p_frags, v_tile);
        __syncthreads();
    }
    copies_landed<0>();

    const long long rows_base = ((long long)blockIdx.y) * seq;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float inv[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float total = l[mt][h];
            total += __shfl_xor_sync(0xffffffff, total, 1);
            total += __shfl_xor_sync(0xffffffff, total, 2);
            inv[h] = total > 0.0f ? 1.0f / total : 0.0f;
            const int row = warp_row0 + mt * 16 + g + 8 * h;
            if (t == 0 && row < seq) lse[rows_base + row] = total > 0.0f ? m[mt][h] + log2f(total) : pos_inf();
        }
        store_rows<D>(out + rows_base * D, o[mt], warp_row0 + mt * 16, seq, inv[0], inv[1]);
    }
}

// dQ, and each row's delta = sum(dO * O) for the dK/dV kernel. Grid: (query tiles of
// 64 rows, batch * heads), the longest rows first.
template <int D>
__device__ void backward_dq(const bf16* __restrict__ q, Strides qs, const bf16* __restrict__ k, Strides ks,
                            const bf16* __restrict__ v, Strides vs, const bf16* __restrict__ out,
                            const bf16* __restrict__ dout, Strides dos, const float* __restrict__ lse,
                            float* __restrict__ delta, bf16* __restrict__ dq, int heads, int kv_heads, int seq,
                            int keys, float scale, float scale_log2) {
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int P = Pitch<D>::row;
    bf16* q_tile = reinterpret_cast<bf16*>(smem);
    bf16* do_tile = q_tile + TILE * P;
    bf16* stages = do_tile + TILE * P;
    float* row_delta = reinterpret_cast<float*>(stages + 4 * TILE * P);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int batch = blockIdx.y / heads, head = blockIdx.y % heads;
    const int kv_head = head / (heads / kv_heads);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * TILE;
    const int offset = keys - seq;
    const int valid_rows = min(TILE, seq - q0);
    const int warp_row0 = q0 + warp * 16;
    const long long rows_base = ((long long)blockIdx.y) * seq;
    const bf16* k_base = k + batch * ks.batch + kv_head * ks.head;
    const bf16* v_base = v + batch * vs.batch + kv_head * vs.head;
    const int tiles = (max(0, key_end(q0, TILE, seq, keys)) + TILE - 1) / TILE;

    fetch_tile<D, TILE>(q_tile, q + batch * qs.batch + head * qs.head + q0 * qs.row, qs.row, valid_rows);
    fetch_tile<D, TILE>(do_tile, dout + batch * dos.batch + head * dos.head + q0 * dos.row, dos.row, valid_rows);
    if (tiles > 0) {
        fetch_tile<D, TILE>(stages, k_base, ks.row, min(TILE, keys));
        fetch_tile<D, TILE>(stages + TILE * P, v_base, vs.row, min(TILE, keys));
    }
    copies_issued();
    copies_landed<0>();
    __syncthreads();

    // delta = sum over D of dO * O: two threads per row, O from global memory.
    {
        const int r = threadIdx.x / 2, half = threadIdx.x % 2;
        float sum = 0.0f;
        if (r < valid_rows) {
            const bf16* o = out + (rows_base + q0 + r) * D + half * (D / 2);
            const bf16* go = do_tile + r * P + half * (D / 2);
            for (int i = 0; i < D / 2; ++i) sum += __bfloat162float(o[i]) * __bfloat162float(go[i]);
        }
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        if (half == 0) {
            row_delta[r] = sum;
            if (r < valid_rows) delta[rows_base + q0 + r] = sum;
        }
    }
    unsigned q_frags[1][D / 16][4], do_frags[1][D / 16][4];
    load_a<D>(q_frags[0], q_tile, warp * 16);
    load_a<D>(do_frags[0], do_tile, warp * 16);
    __syncthreads();
    float row_lse[2], my_delta[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = warp_row0 + g + 8 * h;
        row_lse[h] = row < seq ? lse[rows_base + row] : pos_inf();
        my_delta[h] = row_delta[warp * 16 + g + 8 * h];
    }

    float dq_acc[1][D / 8][4];
    zero<D / 8>(dq_acc[0]);
    for (int i = 0; i < tiles; ++i) {
        const int k0 = i * TILE;
        if (i > 0) {
            copies_landed<0>();
            __syncthreads();
        }
        if (i + 1 < tiles) {
            bf16* next = stages + ((i + 1) & 1) * 2 * TILE * P;
            const int valid = min(TILE, keys - k0 - TILE);
            fetch_tile<D, TILE>(next, k_base + (k0 + TILE) * ks.row, ks.row, valid);
            fetch_tile<D, TILE>(next + TILE * P, v_base + (k0 + TILE) * vs.row, vs.row, valid);
        }
        copies_issued();
        const bf16* k_tile = stages + (i & 1) * 2 * TILE * P;
        const bf16* v_tile = k_tile + TILE * P;

        float s[1][TILE / 8][4], dp[1][TILE / 8][4];
        zero<TILE / 8>(s[0]);
        zero<TILE / 8>(dp[0]);
        times_tile_t<D, 1>(s, q_frags, k_tile);
        times_tile_t<D, 1>(dp, do_frags, v_tile);
        const bool masked = k0 + TILE > keys || k0 + TILE - 1 > warp_row0 + offset;
#pragma unroll
        for (int n = 0; n < TILE / 8; ++n)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int h = j / 2, key = k0 + n * 8 + 2 * t + j % 2;
                const int row = warp_row0 + g + 8 * h;
                float p = fast_exp2(fmaf(s[0][n][j], scale_log2, -row_lse[h]));
                if (masked && !(key < keys && key <= row + offset)) p = 0.0f;
                s[0][n][j] = p * (dp[0][n][j] - my_delta[h]);  // dS / scale
            }
        unsigned ds_frags[1][TILE / 16][4];
        as_a(ds_frags[0], s[0]);
        probs_times_tile<D, 1>(dq_acc, ds_frags, k_tile);
    }
    copies_landed<0>();
    store_rows<D>(dq + rows_base * D, dq_acc[0], warp_row0, seq, scale, scale);
}

// dK and dV. Grid: (key tiles of 64, batch * kv_heads), the keys seen by most queries
// first; each block sums over the query heads its kv head serves.
template <int D>
__device__ void backward_dkv(const bf16* __restrict__ q, Strides qs, const bf16* __restrict__ k, Strides ks,
                             const bf16* __restrict__ v, Strides vs, const bf16* __restrict__ dout, Strides dos,
                             const float* __restrict__ lse, const float* __restrict__ delta, bf16* __restrict__ dk,
                             bf16* __restrict__ dv, int heads, int kv_heads, int seq, int keys, float scale,
                             float scale_log2) {
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int P = Pitch<D>::row;
    bf16* k_tile = reinterpret_cast<bf16*>(smem);
    bf16* v_tile = k_tile + TILE * P;
    bf16* stages = v_tile + TILE * P;  // stage s: queries at s * 2 * TILE * P, dO after
    float* vectors = reinterpret_cast<float*>(stages + 4 * TILE * P);  // stage s: lse, delta

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int k0 = blockIdx.x * TILE;
    const int batch = blockIdx.y / kv_heads, kv_head = blockIdx.y % kv_heads;
    const int groups = heads / kv_heads;
    const int offset = keys - seq;
    const int warp_key0 = k0 + warp * 16;
    // The first query tile that sees this tile's first key; every head walks the same.
    const int first_q0 = (max(0, k0 - offset) / TILE) * TILE;
    const int per_head = first_q0 < seq ? (seq - first_q0 + TILE - 1) / TILE : 0;
    const int tiles = per_head * groups;

    fetch_tile<D, TILE>(k_tile, k + batch * ks.batch + kv_head * ks.head + k0 * ks.row, ks.row, min(TILE, keys - k0));
    fetch_tile<D, TILE>(v_tile, v + batch * vs.batch + kv_head * vs.head + k0 * vs.row, vs.row, min(TILE, keys - k0));
    // Tile i: head kv_head * groups + i / per_head, queries from first_q0 + (i % per_head) * TILE.
    auto fetch = [&](int i, int stage) {
        const int head = kv_head * groups + i / per_head, q_start = first_q0 + (i % per_head) * TILE;
        const int valid = min(TILE, seq - q_start);
        bf16* dst = stages + stage * 2 * TILE * P;
        fetch_tile<D, TILE>(dst, q + batch * qs.batch + head * qs.head + q_start * qs.row, qs.row, valid);
        fetch_tile<D, TILE>(dst + TILE * P, dout + batch * dos.batch + head * dos.head + q_start * dos.row, dos.row,
                            valid);
        const long long rows = ((long long)batch * heads + head) * seq + q_start;
        fetch_vectors(vectors + stage * 2 * TILE, lse + rows, delta + rows, valid);
    };
    if (tiles > 0) fetch(0, 0);
    copies_issued();
    copies_landed<0>();
    __syncthreads();

    unsigned k_frags[1][D / 16][4], v_frags[1][D / 16][4];
    load_a<D>(k_frags[0], k_tile, warp * 16);
    load_a<D>(v_frags[0], v_tile, warp * 16);

    float dk_acc[1][D / 8][4], dv_acc[1][D / 8][4];
    zero<D / 8>(dk_acc[0]);
    zero<D / 8>(dv_acc[0]);
    for (int i = 0; i < tiles; ++i) {
        const int q_start = first_q0 + (i % per_head) * TILE;
        if (i > 0) {
            copies_landed<0>();
            __syncthreads();
        }
        if (i + 1 < tiles) fetch(i + 1, (i + 1) & 1);
        copies_issued();
        const bf16* q_tile = stages + (i & 1) * 2 * TILE * P;
        const bf16* do_tile = q_tile + TILE * P;
        const float* tile_lse = vectors + (i & 1) * 2 * TILE;
        const float* tile_delta = tile_lse + TILE;

        // Transposed scores: this warp's 16 keys against the tile's 64 queries.
        float s[1][TILE / 8][4], dp[1][TILE / 8][4];
        zero<TILE / 8>(s[0]);
        zero<TILE / 8>(dp[0]);
        times_tile_t<D, 1>(s, k_frags, q_tile);
        times_tile_t<D, 1>(dp, v_frags, do_tile);
        const bool masked = q_start + offset < warp_key0 + 15 || warp_key0 + 16 > keys;
#pragma unroll
        for (int n = 0; n < TILE / 8; ++n)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = n * 8 + 2 * t + j % 2;
                const int key = warp_key0 + g + 8 * (j / 2), row = q_start + c;
                float p = fast_exp2(fmaf(s[0][n][j], scale_log2, -tile_lse[c]));
                if (masked && !(key < keys && key <= row + offset)) p = 0.0f;
                s[0][n][j] = p;
                dp[0][n][j] = p * (dp[0][n][j] - tile_delta[c]);  // dS / scale
            }
        unsigned p_frags[1][TILE / 16][4], ds_frags[1][TILE / 16][4];
        as_a(p_frags[0], s[0]);
        as_a(ds_frags[0], dp[0]);
        probs_times_tile<D, 1>(dv_acc, p_frags, do_tile);
        probs_times_tile<D, 1>(dk_acc, ds_frags, q_tile);
    }
    copies_landed<0>();
    const long long out_base = ((long long)blockIdx.y) * keys * D;
    store_rows<D>(dk + out_base, dk_acc[0], warp_key0, keys, scale, scale);
    store_rows<D>(dv + out_base, dv_acc[0], warp_key0, keys, 1.0f, 1.0f);
}

// flash_geometry_D: rows per block (queries; keys for dK/dV), threads per block and
// dynamic shared bytes of the forward, dQ and dK/dV kernels, which the host reads to
// launch them.
#define ENTRY_POINTS(D)                                                                                       \
    extern "C" __device__ const int flash_geometry_##D[9] = {                                              \
        TILE * FORWARD_MTILES(D), THREADS, FORWARD_SHARED(D), TILE, THREADS, DQ_SHARED(D),                  \
        TILE,                     THREADS, DKV_SHARED(D)};                                                 \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                  \
        flash_forward_##D(const bf16* q, Strides qs, const bf16* k, Strides ks, const bf16* v, Strides vs,   \
                          bf16* out, float* lse, int heads, int kv_heads, int seq, int keys, float scale,    \
                          float scale_log2) {                                                              \
        forward<D, FORWARD_MTILES(D)>(q, qs, k, ks, v, vs, out, lse, heads, kv_heads, seq, keys, scale_log2); \
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
#ifndef FLASH_WGMMA
ENTRY_POINTS(64)
ENTRY_POINTS(128)
#endif
// With FLASH_WGMMA (Hopper), flash_attention_sm90.cu follows and defines 64 and 128.
