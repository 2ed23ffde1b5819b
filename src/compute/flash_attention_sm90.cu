// Hopper (sm_90a) versions of the flash-attention kernels, on warpgroup MMA: wgmma
// reads its B operand (and, where it is a resident tile, A) straight from shared
// memory, shared by the four warps of a warpgroup, where mma.sync makes every warp
// load every fragment into its own registers through ldmatrix (the streamed tile read
// four times over for the same products). The host appends this file to
// flash_attention.cu, with FLASH_WGMMA defined, on compute capability 9.0; the
// arithmetic (the online softmax, lse, delta, dS / scale, no atomics) is the same.
//
// Tiles live in shared memory in wgmma's 128-byte swizzle: a [ROWS][D] bf16 tile is
// D / 64 column halves one after the other, each [ROWS][128 bytes], with the 16-byte
// chunk c of row r stored at c ^ (r % 8), so that eight rows' chunks fall on
// different banks. Each block has two warpgroups of 128 threads; a warpgroup owns 64
// rows (query rows in the forward and dQ kernels, keys in the dK/dV kernel), and its
// warp w the 16 rows from 16w, in the mma.sync fragment layout that wgmma's
// accumulators share, so the softmax code is that of the mma.sync kernels.

#define WG_THREADS 128

#ifndef GRAFT_CUDA_EMULATION
// The instructions themselves (tests/cuda_emulation/cuda_emu.h has CPU versions).

// 4 bytes from global to shared memory by cp.async.
__device__ __forceinline__ void copy4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(shared_address(dst)), "l"(src));
}

// The compiler sees a wgmma's accumulators written when it is issued, not when
// wgmma.wait_group returns: these empty statements tie the registers to a point in the
// instruction order (after a wait, before a fence), so that no ordinary instruction
// reads or writes them while a product is in flight.
template <int N>
__device__ __forceinline__ void pin(float (*d)[4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
}
template <int N>
__device__ __forceinline__ void pin(unsigned (*a)[4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[i][j])::"memory");
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed groups of products are still in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Shared memory written through the generic proxy (cp.async, st.shared) made visible
// to wgmma's reads, which go through the async proxy; before the barrier.
__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The wgmma wrappers, for N = 64 and 128 columns: d (64 x N, f32) as [N / 8][4] in the
// mma.sync fragment layout of each warp's 16 rows, which wgmma's accumulators share.
#define WG_ACC4(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define WG_ACC32(d, j) \
    WG_ACC4(d, j), WG_ACC4(d, j + 1), WG_ACC4(d, j + 2), WG_ACC4(d, j + 3), WG_ACC4(d, j + 4), WG_ACC4(d, j + 5), \
        WG_ACC4(d, j + 6), WG_ACC4(d, j + 7)
#define WG_ACC_64(d) WG_ACC32(d, 0)
#define WG_ACC_128(d) WG_ACC32(d, 0), WG_ACC32(d, 8)
#define WG_REGS_64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_REGS_128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d = A (64 x 16, shared, K-major) * B (16 x N, shared, K-major), plus d where
// `accumulate`. Operands after the N / 2 accumulators: A, B, accumulate.
#define WGMMA_SS(N, A, B, ACCUMULATE)                                                                        \
    __device__ __forceinline__ void wgmma_ss_##N(float (*d)[4], unsigned long long a, unsigned long long b,  \
                                                 int accumulate) {                                           \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " ACCUMULATE ", 0;\n"                                  \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 " WG_REGS_##N ", " A ", " B   \
                     ", p, 1, 1, 0, 0;\n}\n"                                                                 \
                     : WG_ACC_##N(d)                                                                         \
                     : "l"(a), "l"(b), "r"(accumulate));                                                     \
    }
WGMMA_SS(64, "%32", "%33", "%34")
WGMMA_SS(128, "%64", "%65", "%66")

// d += A (64 x 16, registers in the mma.sync A layout) * B (16 x N, shared): wgmma_rs_N
// with B N-major (rows of the stored tile are the product's inner dimension, TRANS_B
// 1), wgmma_rs_k_N with B K-major (rows of the stored tile are the product's columns,
// TRANS_B 0).
#define WGMMA_RS(NAME, N, TRANS_B, A, B, ONE)                                                                \
    __device__ __forceinline__ void NAME(float (*d)[4], const unsigned* a, unsigned long long b) {            \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " ONE ", 0;\n"                                         \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 " WG_REGS_##N ", " A ", " B   \
                     ", p, 1, 1, " #TRANS_B ";\n}\n"                                                         \
                     : WG_ACC_##N(d)                                                                         \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));                         \
    }
WGMMA_RS(wgmma_rs_64, 64, 1, "{%32, %33, %34, %35}", "%36", "%37")
WGMMA_RS(wgmma_rs_128, 128, 1, "{%64, %65, %66, %67}", "%68", "%69")
WGMMA_RS(wgmma_rs_k_64, 64, 0, "{%32, %33, %34, %35}", "%36", "%37")
WGMMA_RS(wgmma_rs_k_128, 128, 0, "{%64, %65, %66, %67}", "%68", "%69")

#endif

// Byte offset of 16-byte chunk `chunk` (of D / 8) of row r in a swizzled [ROWS][D] tile.
template <int ROWS>
__device__ __forceinline__ int swizzled(int r, int chunk) {
    return (chunk / 8) * ROWS * 128 + r * 128 + (((chunk % 8) ^ (r % 8)) << 4);
}

// Starts copying rows [0, valid) of a [ROWS][D] tile from global memory into a
// swizzled shared tile, zero-filling the rest.
template <int D, int ROWS>
__device__ __forceinline__ void fetch_swizzled(unsigned char* dst, const bf16* src, long long row_stride, int valid) {
    constexpr int chunks = D / 8;
    for (int c = threadIdx.x; c < ROWS * chunks; c += blockDim.x) {
        const int r = c / chunks, part = c % chunks;
        const bool ok = r < valid;
        copy16(dst + swizzled<ROWS>(r, part), ok ? src + r * row_stride + part * 8 : src, ok);
    }
}

// A query tile's lse (threads 0-63) and delta (64-127) into shared memory by 4-byte
// cp.async, so that no thread waits on the loads here (plain loads would hold each
// thread for a global memory round trip every tile). Rows past `valid` get lse +inf
// (probability 0) and delta 0.
__device__ __forceinline__ void fetch_vectors_async(float* dst, const float* lse, const float* delta, int valid) {
    const int i = threadIdx.x % 64;
    if (threadIdx.x >= 128) return;
    const bool is_delta = threadIdx.x >= 64;
    if (i < valid)
        copy4(dst + threadIdx.x, (is_delta ? delta : lse) + i);
    else
        dst[threadIdx.x] = is_delta ? 0.0f : pos_inf();
}

// Shared memory descriptor of a wgmma operand: start address, leading and stride byte
// offsets, 128-byte swizzle.
__device__ __forceinline__ unsigned long long operand_desc(const unsigned char* p, unsigned leading,
                                                           unsigned stride) {
    const unsigned long long address = shared_address(p);
    return ((address & 0x3FFFF) >> 4) | ((unsigned long long)((leading >> 4) & 0x3FFF) << 16) |
           ((unsigned long long)((stride >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

// K-major operand: rows from row0 (a multiple of 8) of a swizzled [ROWS][D] tile,
// columns [16 kk, 16 kk + 16). Eight-row groups are 1024 bytes apart; a k-slice is
// 32 bytes into its half's rows, which the hardware swizzles as the copies did.
// (The leading offset is unused in this layout; 16 bytes as the PTX ISA assumes.)
template <int ROWS>
__device__ __forceinline__ unsigned long long k_major(const unsigned char* tile, int row0, int kk) {
    return operand_desc(tile + (kk / 4) * ROWS * 128 + row0 * 128 + (kk % 4) * 32, 16, 1024);
}

// N-major B operand: rows [16 kk, 16 kk + 16) of a swizzled [ROWS][D] tile as the
// product's inner dimension, its D columns as the product's columns. The leading
// offset steps between 64-column halves, the stride between eight-row groups.
template <int ROWS>
__device__ __forceinline__ unsigned long long n_major(const unsigned char* tile, int kk) {
    return operand_desc(tile + kk * 16 * 128, ROWS * 128, 1024);
}

// The dynamic shared memory rounded up to 1024 bytes (the swizzle's period; kernels
// ask for 1024 bytes more than they use).
__device__ __forceinline__ unsigned char* aligned_shared(unsigned char* smem) {
    return smem + ((1024 - (shared_address(smem) & 1023)) & 1023);
}

template <int N>
__device__ __forceinline__ void wgmma_ss(float (*d)[4], unsigned long long a, unsigned long long b, int accumulate) {
    if constexpr (N == 64) wgmma_ss_64(d, a, b, accumulate);
    else wgmma_ss_128(d, a, b, accumulate);
}

template <int N>
__device__ __forceinline__ void wgmma_rs(float (*d)[4], const unsigned* a, unsigned long long b) {
    if constexpr (N == 64) wgmma_rs_64(d, a, b);
    else wgmma_rs_128(d, a, b);
}

template <int N>
__device__ __forceinline__ void wgmma_rs_k(float (*d)[4], const unsigned* a, unsigned long long b) {
    if constexpr (N == 64) wgmma_rs_k_64(d, a, b);
    else wgmma_rs_k_128(d, a, b);
}

// A warp's 16 rows from row0 of a [rows][D] bf16 matrix in global memory (rows
// row_stride apart) as wgmma A fragments, in the mma.sync A layout; zeros from row
// `valid` on.
template <int D>
__device__ __forceinline__ void load_a_frags(unsigned (*a)[4], const bf16* base, long long row_stride, int row0,
                                             int valid) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = row0 + g + 8 * (i % 2), col = 16 * kk + 2 * t + 8 * (i / 2);
            a[kk][i] = row < valid ? *reinterpret_cast<const unsigned*>(base + row * row_stride + col) : 0u;
        }
}

// acc (64 x N) = fragments (64 x D, A layout) times the transpose of shared tile `b`
// ([N][D], K-major): D / 16 products, not yet waited for.
template <int D, int N>
__device__ __forceinline__ void frags_times_tile_t(float (*acc)[4], unsigned (*frags)[4], const unsigned char* b) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) wgmma_rs_k<N>(acc, frags[kk], k_major<N>(b, 0, kk));
}

// acc (64 x N) = rows [row0, row0 + 64) of shared tile `a` ([A_ROWS][D]) times the
// transpose of shared tile `b` ([N][D]): D / 16 products, not yet waited for.
template <int D, int N, int A_ROWS>
__device__ __forceinline__ void rows_times_tile_t(float (*acc)[4], const unsigned char* a, int row0,
                                                  const unsigned char* b) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) wgmma_ss<N>(acc, k_major<A_ROWS>(a, row0, kk), k_major<N>(b, 0, kk), kk > 0);
}

// acc (64 x D) += fragments (64 x K, A layout) times shared tile `b` ([K][D]), not yet
// waited for.
template <int D, int K>
__device__ __forceinline__ void frags_times_tile(float (*acc)[4], unsigned (*frags)[4], const unsigned char* b) {
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) wgmma_rs<D>(acc, frags[kk], n_major<K>(b, kk));
}

// Starts copying the key and value tiles from key k0 (KEYS rows each, zeros past
// `keys`) into a stage: keys at `stage`, values after them.
template <int D, int KEYS>
__device__ __forceinline__ void fetch_kv(unsigned char* stage, const bf16* k_base, Strides ks, const bf16* v_base,
                                         Strides vs, int k0, int keys) {
    const int valid = min(KEYS, keys - k0);
    fetch_swizzled<D, KEYS>(stage, k_base + k0 * ks.row, ks.row, valid);
    fetch_swizzled<D, KEYS>(stage + KEYS * D * 2, v_base + k0 * vs.row, vs.row, valid);
}

// Waits until at most N groups of this thread's copies are in flight, then until every
// thread's landed copies are visible to every warp's wgmma.
template <int N>
__device__ __forceinline__ void stage_landed() {
    copies_landed<N>();
    proxy_fence();
    __syncthreads();
}

// Tile i of keys and values, two stages deep: starts tile i + 1's copies into the
// other stage, waits until tile i's have landed for every warp, and returns its keys
// (values follow).
template <int D, int KEYS>
__device__ __forceinline__ const unsigned char* kv_stage(unsigned char* stages, int i, int tiles, const bf16* k_base,
                                                         Strides ks, const bf16* v_base, Strides vs, int keys) {
    constexpr int KV_BYTES = KEYS * D * 2;
    if (i + 1 < tiles)
        fetch_kv<D, KEYS>(stages + ((i + 1) & 1) * 2 * KV_BYTES, k_base, ks, v_base, vs, (i + 1) * KEYS, keys);
    copies_issued();
    stage_landed<1>();
    return stages + (i & 1) * 2 * KV_BYTES;
}

// Scores (16 x N a warp, accumulator layout) set to -inf where the key is not seen by
// the query: rows are queries from row0 and columns keys from col0, or, TRANSPOSED,
// rows keys and columns queries. Called only on tiles that cross the diagonal or the
// end of the keys, behind a branch, so that full tiles pay nothing for it.
template <int N, bool TRANSPOSED>
__device__ __forceinline__ void mask_scores(float (*s)[4], int row0, int col0, int keys, int offset) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int n = 0; n < N / 8; ++n)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int row = row0 + g + 8 * (j / 2), col = col0 + n * 8 + 2 * t + j % 2;
            const int query = TRANSPOSED ? col : row, key = TRANSPOSED ? row : col;
            if (!(key < keys && key <= query + offset)) s[n][j] = neg_inf();
        }
}

// The backward's two score products into s and dp (64 x N each), issued by `issue` in
// one group, waited for.
template <int N, class Issue>
__device__ __forceinline__ void score_pair_by(float (*s)[4], float (*dp)[4], Issue issue) {
    zero<N / 8>(s);
    zero<N / 8>(dp);
    pin<N / 8>(s);
    pin<N / 8>(dp);
    wg_fence();
    issue();
    wg_commit();
    wgmma_wait<0>();
    pin<N / 8>(s);
    pin<N / 8>(dp);
}

// The same from shared memory: s = rows [row0, row0 + 64) of shared tile a
// ([A_ROWS][D]) times the transpose of shared tile b ([N][D]), and dp likewise of c
// and d.
template <int D, int N, int A_ROWS>
__device__ __forceinline__ void score_pair(float (*s)[4], const unsigned char* a, const unsigned char* b,
                                           float (*dp)[4], const unsigned char* c, const unsigned char* d,
                                           int row0) {
    score_pair_by<N>(s, dp, [&] {
        rows_times_tile_t<D, N, A_ROWS>(s, a, row0, b);
        rows_times_tile_t<D, N, A_ROWS>(dp, c, row0, d);
    });
}

// acc (64 x D) += fragments (64 x K, A layout) times shared tile `b` ([K][D]), after
// the ordinary instructions that wrote either, waited for.
template <int D, int K>
__device__ __forceinline__ void accumulate(float (*acc)[4], unsigned (*frags)[4], const unsigned char* b) {
    pin<K / 16>(frags);
    pin<D / 8>(acc);
    wg_fence();
    frags_times_tile<D, K>(acc, frags, b);
    wg_commit();
    wgmma_wait<0>();
    pin<D / 8>(acc);
}

// The dK/dV kernels' element-wise part: transposed scores s (this warp's 16 keys from
// warp_key0 against N queries from q_start) into probabilities P, and dp into
// dS / scale, with the tile's lse and delta.
template <int N>
__device__ __forceinline__ void transposed_probabilities(float (*s)[4], float (*dp)[4], const float* tile_lse,
                                                         const float* tile_delta, float scale_log2, int warp_key0,
                                                         int q_start, int keys, int offset) {
    const int t = threadIdx.x % 4;
    if (q_start + offset < warp_key0 + 15 || warp_key0 + 16 > keys)
        mask_scores<N, true>(s, warp_key0, q_start, keys, offset);
#pragma unroll
    for (int n = 0; n < N / 8; ++n)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = n * 8 + 2 * t + j % 2;
            const float p = fast_exp2(fmaf(s[n][j], scale_log2, -tile_lse[c]));
            s[n][j] = p;
            dp[n][j] = p * (dp[n][j] - tile_delta[c]);  // dS / scale
        }
}

// The forward's online softmax over one tile of scores (16 x N a warp, queries from
// row0 against keys from k0): masks the tile where it crosses the diagonal or the end
// of the keys, turns the scores into probabilities against the running row maxima m
// (log2 units), adds them to the row sums l, and gives the factor by which the
// output accumulated so far must be scaled, which the caller applies.
template <int N>
__device__ __forceinline__ void online_softmax(float (*s)[4], float* m, float* l, float* rescale, int row0, int k0,
                                               int keys, int offset, float scale_log2) {
    if (k0 + N > keys || k0 + N - 1 > row0 + offset) mask_scores<N, false>(s, row0, k0, keys, offset);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float tile_max = neg_inf();
#pragma unroll
        for (int n = 0; n < N / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) tile_max = fmaxf(tile_max, s[n][2 * h + e]);
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 2));
        const float m_new = fmaxf(m[h], tile_max * scale_log2);
        const float base = m_new == neg_inf() ? 0.0f : m_new;
        rescale[h] = fast_exp2(m[h] - base);
        m[h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < N / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float p = fast_exp2(fmaf(s[n][2 * h + e], scale_log2, -base));
                s[n][2 * h + e] = p;
                sum += p;
            }
        l[h] = l[h] * rescale[h] + sum;
    }
}

// Output accumulators (16 x D a warp) times each row half's factor.
template <int D>
__device__ __forceinline__ void rescale_rows(float (*o)[4], const float* rescale) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int j = 0; j < 4; ++j) o[n][j] *= rescale[j / 2];
}

// Keys per streamed tile in the forward: 128 where the scores fit beside the output
// accumulators in registers.
#ifndef SM90_FORWARD_KEYS
#define SM90_FORWARD_KEYS(D) ((D) <= 64 ? 128 : 64)
#endif
// Warpgroups (of 64 rows each) per block of each kernel, and the blocks per SM the
// register allocation is made for.
#ifndef SM90_FORWARD_WGS
#define SM90_FORWARD_WGS(D) 2
#endif
#ifndef SM90_DQ_WGS
#define SM90_DQ_WGS(D) 2
#endif
#ifndef SM90_DKV_WGS
#define SM90_DKV_WGS(D) 2
#endif
#ifndef SM90_FORWARD_MIN_BLOCKS
#define SM90_FORWARD_MIN_BLOCKS(D) 2
#endif
#ifndef SM90_DQ_MIN_BLOCKS
#define SM90_DQ_MIN_BLOCKS(D) ((D) <= 64 ? 2 : 1)
#endif
#ifndef SM90_DKV_MIN_BLOCKS
#define SM90_DKV_MIN_BLOCKS(D) 1
#endif
#define SM90_TILE_BYTES(ROWS, D) ((ROWS) * (D) * 2)
#define SM90_FORWARD_SHARED(D) \
    (1024 + SM90_TILE_BYTES(64 * SM90_FORWARD_WGS(D), D) + 4 * SM90_TILE_BYTES(SM90_FORWARD_KEYS(D), D))
#define SM90_DQ_SHARED(D) \
    (1024 + 2 * SM90_TILE_BYTES(64 * SM90_DQ_WGS(D), D) + 4 * SM90_TILE_BYTES(64, D) + 64 * SM90_DQ_WGS(D) * 4)
#ifndef SM90_DKV_STAGES
#define SM90_DKV_STAGES(D) 3
#endif
// The dK/dV kernel's keys and values held in registers as the score products' A
// operand, so that those products read only the streamed query tiles from shared
// memory (2-6% of the backward at 8k-32k, head size 64); at 128 they do not fit.
#ifndef SM90_DKV_KV_REGISTERS
#define SM90_DKV_KV_REGISTERS(D) ((D) <= 64)
#endif
// Keys and values in shared memory unless in registers, then the query stages.
#define SM90_DKV_SHARED(D)                                                                      \
    (1024 + (SM90_DKV_KV_REGISTERS(D) ? 0 : 2 * SM90_TILE_BYTES(64 * SM90_DKV_WGS(D), D)) + \
     SM90_DKV_STAGES(D) * (2 * SM90_TILE_BYTES(64, D) + 2 * 64 * 4))

// Forward: 64 query rows per warpgroup, keys and values streamed in tiles of KEYS, two
// stages deep. Grid: (query blocks, batch * heads), the longest rows first.
template <int D>
__device__ void forward_sm90(const bf16* __restrict__ q, Strides qs, const bf16* __restrict__ k, Strides ks,
                             const bf16* __restrict__ v, Strides vs, bf16* __restrict__ out, float* __restrict__ lse,
                             int heads, int kv_heads, int seq, int keys, float scale_log2) {
    constexpr int ROWS = 64 * SM90_FORWARD_WGS(D), KEYS = SM90_FORWARD_KEYS(D);
    constexpr int KV_BYTES = SM90_TILE_BYTES(KEYS, D);
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* q_tile = aligned_shared(smem);
    unsigned char* stages = q_tile + SM90_TILE_BYTES(ROWS, D);  // stage s: keys at 2 s KV_BYTES, values after

    const int wg = threadIdx.x / WG_THREADS, warp = (threadIdx.x % WG_THREADS) / 32;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int batch = blockIdx.y / heads, head = blockIdx.y % heads;
    const int kv_head = head / (heads / kv_heads);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * ROWS;
    const int offset = keys - seq;
    const int wg_row0 = q0 + wg * 64, warp_row0 = wg_row0 + warp * 16;
    const int wg_key_end = key_end(wg_row0, 64, seq, keys);
    const bf16* k_base = k + batch * ks.batch + kv_head * ks.head;
    const bf16* v_base = v + batch * vs.batch + kv_head * vs.head;
    const int tiles = (max(0, key_end(q0, ROWS, seq, keys)) + KEYS - 1) / KEYS;

    fetch_swizzled<D, ROWS>(q_tile, q + batch * qs.batch + head * qs.head + q0 * qs.row, qs.row, min(ROWS, seq - q0));
    if (tiles > 0) fetch_kv<D, KEYS>(stages, k_base, ks, v_base, vs, 0, keys);
    copies_issued();

    float o[D / 8][4];
    float m[2], l[2];
    zero<D / 8>(o);
    m[0] = m[1] = neg_inf();
    l[0] = l[1] = 0.0f;

    for (int i = 0; i < tiles; ++i) {
        const int k0 = i * KEYS;
        const unsigned char* k_tile = kv_stage<D, KEYS>(stages, i, tiles, k_base, ks, v_base, vs, keys);
        const unsigned char* v_tile = k_tile + KV_BYTES;

        // A warpgroup whose rows all come before this tile's keys has nothing to add.
        if (k0 < wg_key_end) {
            float s[KEYS / 8][4];
            zero<KEYS / 8>(s);
            pin<KEYS / 8>(s);
            wg_fence();
            rows_times_tile_t<D, KEYS, ROWS>(s, q_tile, wg * 64, k_tile);
            wg_commit();
            wgmma_wait<0>();
            pin<KEYS / 8>(s);

            float rescale[2];
            online_softmax<KEYS>(s, m, l, rescale, warp_row0, k0, keys, offset, scale_log2);
            rescale_rows<D>(o, rescale);
            unsigned p_frags[KEYS / 16][4];
            as_a<KEYS>(p_frags, s);
            accumulate<D, KEYS>(o, p_frags, v_tile);
        }
        __syncthreads();
    }
    copies_landed<0>();

    const long long rows_base = ((long long)blockIdx.y) * seq;
    float inv[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float total = l[h];
        total += __shfl_xor_sync(0xffffffff, total, 1);
        total += __shfl_xor_sync(0xffffffff, total, 2);
        inv[h] = total > 0.0f ? 1.0f / total : 0.0f;
        const int row = warp_row0 + g + 8 * h;
        if (t == 0 && row < seq) lse[rows_base + row] = total > 0.0f ? m[h] + log2f(total) : pos_inf();
    }
    store_rows<D>(out + rows_base * D, o, warp_row0, seq, inv[0], inv[1]);
}

// The dQ kernel's element-wise part: scores s and dp (16 x N a warp, queries from
// row0 against keys from k0) into dS / scale as A fragments, masked where the tile
// crosses the diagonal or the end of the keys (-inf scores give probability 0).
template <int N>
__device__ __forceinline__ void score_gradients(unsigned (*ds)[4], float (*s)[4], float (*dp)[4],
                                                const float* row_lse, const float* row_delta, int row0, int k0,
                                                int keys, int offset, float scale_log2) {
    if (k0 + N > keys || k0 + N - 1 > row0 + offset) mask_scores<N, false>(s, row0, k0, keys, offset);
#pragma unroll
    for (int n = 0; n < N / 8; ++n)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int h = j / 2;
            const float p = fast_exp2(fmaf(s[n][j], scale_log2, -row_lse[h]));
            s[n][j] = p * (dp[n][j] - row_delta[h]);
        }
    as_a<N>(ds, s);
}

// dQ, and each row's delta = sum(dO * O) for the dK/dV kernel: 64 query rows per
// warpgroup, keys and values streamed in tiles of 64, two stages deep. Grid: (query blocks, batch * heads), the
// longest rows first.
template <int D>
__device__ void backward_dq_sm90(const bf16* __restrict__ q, Strides qs, const bf16* __restrict__ k, Strides ks,
                                 const bf16* __restrict__ v, Strides vs, const bf16* __restrict__ out,
                                 const bf16* __restrict__ dout, Strides dos, const float* __restrict__ lse,
                                 float* __restrict__ delta, bf16* __restrict__ dq, int heads, int kv_heads, int seq,
                                 int keys, float scale, float scale_log2) {
    constexpr int ROWS = 64 * SM90_DQ_WGS(D), KEYS = 64;
    constexpr int KV_BYTES = SM90_TILE_BYTES(KEYS, D);
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* q_tile = aligned_shared(smem);
    unsigned char* do_tile = q_tile + SM90_TILE_BYTES(ROWS, D);
    unsigned char* stages = do_tile + SM90_TILE_BYTES(ROWS, D);  // stage s: keys at 2 s KV_BYTES, values after
    float* row_delta = reinterpret_cast<float*>(stages + 4 * KV_BYTES);

    const int wg = threadIdx.x / WG_THREADS, warp = (threadIdx.x % WG_THREADS) / 32;
    const int lane = threadIdx.x % 32, g = lane / 4;
    const int batch = blockIdx.y / heads, head = blockIdx.y % heads;
    const int kv_head = head / (heads / kv_heads);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * ROWS;
    const int offset = keys - seq;
    const int valid_rows = min(ROWS, seq - q0);
    const int wg_row0 = q0 + wg * 64, warp_row0 = wg_row0 + warp * 16;
    const int wg_key_end = key_end(wg_row0, 64, seq, keys);
    const long long rows_base = ((long long)blockIdx.y) * seq;
    const bf16* k_base = k + batch * ks.batch + kv_head * ks.head;
    const bf16* v_base = v + batch * vs.batch + kv_head * vs.head;
    const bf16* do_base = dout + batch * dos.batch + head * dos.head + q0 * dos.row;
    const int tiles = (max(0, key_end(q0, ROWS, seq, keys)) + KEYS - 1) / KEYS;

    fetch_swizzled<D, ROWS>(q_tile, q + batch * qs.batch + head * qs.head + q0 * qs.row, qs.row, valid_rows);
    fetch_swizzled<D, ROWS>(do_tile, do_base, dos.row, valid_rows);
    if (tiles > 0) fetch_kv<D, KEYS>(stages, k_base, ks, v_base, vs, 0, keys);
    copies_issued();

    // delta = sum over D of dO * O: two threads per row, both from global memory.
    {
        const int r = threadIdx.x / 2, half = threadIdx.x % 2;
        float sum = 0.0f;
        if (r < valid_rows) {
            const bf16* o = out + (rows_base + q0 + r) * D + half * (D / 2);
            const bf16* go = do_base + r * dos.row + half * (D / 2);
            for (int i = 0; i < D / 2; ++i) sum += __bfloat162float(o[i]) * __bfloat162float(go[i]);
        }
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        if (half == 0) {
            row_delta[r] = sum;
            if (r < valid_rows) delta[rows_base + q0 + r] = sum;
        }
    }
    __syncthreads();
    float row_lse[2], my_delta[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = warp_row0 + g + 8 * h;
        row_lse[h] = row < seq ? lse[rows_base + row] : pos_inf();
        my_delta[h] = row_delta[row - q0];
    }

    float dq_acc[D / 8][4];
    zero<D / 8>(dq_acc);
    for (int i = 0; i < tiles; ++i) {
        const int k0 = i * KEYS;
        const unsigned char* k_tile = kv_stage<D, KEYS>(stages, i, tiles, k_base, ks, v_base, vs, keys);
        const unsigned char* v_tile = k_tile + KV_BYTES;

        if (k0 < wg_key_end) {
            float s[KEYS / 8][4], dp[KEYS / 8][4];
            score_pair<D, KEYS, ROWS>(s, q_tile, k_tile, dp, do_tile, v_tile, wg * 64);
            unsigned ds_frags[KEYS / 16][4];
            score_gradients<KEYS>(ds_frags, s, dp, row_lse, my_delta, warp_row0, k0, keys, offset, scale_log2);
            accumulate<D, KEYS>(dq_acc, ds_frags, k_tile);
        }
        __syncthreads();
    }
    copies_landed<0>();
    store_rows<D>(dq + rows_base * D, dq_acc, warp_row0, seq, scale, scale);
}

// A dK/dV block's walk over the query tiles (QUERIES rows each) that see its keys:
// its keys from k0, its kv head, and tile i's query head and first row, every query
// head its kv head serves walking the same rows.
template <int ROWS, int QUERIES>
struct DkvWalk {
    int k0, batch, kv_head, groups, offset, wg_key0, warp_key0, first_q0, per_head, tiles;
    __device__ DkvWalk(int heads, int kv_heads, int seq, int keys)
        : k0(blockIdx.x * ROWS), batch(blockIdx.y / kv_heads), kv_head(blockIdx.y % kv_heads),
          groups(heads / kv_heads), offset(keys - seq), wg_key0(k0 + threadIdx.x / WG_THREADS * 64),
          warp_key0(wg_key0 + threadIdx.x % WG_THREADS / 32 * 16),
          // The first query tile that sees this block's first key.
          first_q0(max(0, k0 - offset) / QUERIES * QUERIES),
          per_head(first_q0 < seq ? (seq - first_q0 + QUERIES - 1) / QUERIES : 0), tiles(per_head * groups) {}
    __device__ int q_start(int i) const { return first_q0 + i % max(per_head, 1) * QUERIES; }
    __device__ int head(int i) const { return kv_head * groups + i / max(per_head, 1); }
};

// Starts copying query tile i of a dK/dV block's walk: its queries and output
// gradients into `stage` (dO after the queries), its lse and delta into `vectors`.
template <int D, int ROWS, int QUERIES>
__device__ __forceinline__ void fetch_query_tile(const DkvWalk<ROWS, QUERIES>& w, int i, unsigned char* stage,
                                                 float* vectors, const bf16* q, Strides qs, const bf16* dout,
                                                 Strides dos, const float* lse, const float* delta, int heads,
                                                 int seq) {
    const int head = w.head(i), q_start = w.q_start(i);
    const int valid = min(QUERIES, seq - q_start);
    fetch_swizzled<D, QUERIES>(stage, q + w.batch * qs.batch + head * qs.head + q_start * qs.row, qs.row, valid);
    fetch_swizzled<D, QUERIES>(stage + SM90_TILE_BYTES(QUERIES, D),
                               dout + w.batch * dos.batch + head * dos.head + q_start * dos.row, dos.row, valid);
    const long long rows = ((long long)w.batch * heads + head) * seq + q_start;
    fetch_vectors_async(vectors, lse + rows, delta + rows, valid);
}

// dK and dV: 64 keys per warpgroup, queries and output gradients streamed in tiles of
// 64, SM90_DKV_STAGES deep.
// Grid: (key blocks, batch * kv_heads), the keys seen by most queries first; each
// block sums over the query heads its kv head serves.
template <int D>
__device__ void backward_dkv_sm90(const bf16* __restrict__ q, Strides qs, const bf16* __restrict__ k, Strides ks,
                                  const bf16* __restrict__ v, Strides vs, const bf16* __restrict__ dout, Strides dos,
                                  const float* __restrict__ lse, const float* __restrict__ delta,
                                  bf16* __restrict__ dk, bf16* __restrict__ dv, int heads, int kv_heads, int seq,
                                  int keys, float scale, float scale_log2) {
    constexpr int ROWS = 64 * SM90_DKV_WGS(D), QUERIES = 64;
    constexpr int Q_BYTES = SM90_TILE_BYTES(QUERIES, D);
    extern __shared__ __align__(128) unsigned char smem[];
    // The block's keys and values (unless held in registers), then the query stages.
    constexpr int KV_SHARED = SM90_DKV_KV_REGISTERS(D) ? 0 : SM90_TILE_BYTES(ROWS, D);
    unsigned char* k_tile = aligned_shared(smem);
    unsigned char* v_tile = k_tile + KV_SHARED;
    constexpr int STAGES = SM90_DKV_STAGES(D);
    unsigned char* stages = v_tile + KV_SHARED;  // stage s: queries at 2 s Q_BYTES, dO after
    float* vectors = reinterpret_cast<float*>(stages + 2 * STAGES * Q_BYTES);  // stage s: lse, delta

    const DkvWalk<ROWS, QUERIES> w(heads, kv_heads, seq, keys);
    const int wg = threadIdx.x / WG_THREADS;
    if constexpr (!SM90_DKV_KV_REGISTERS(D))
        fetch_kv<D, ROWS>(k_tile, k + w.batch * ks.batch + w.kv_head * ks.head, ks,
                          v + w.batch * vs.batch + w.kv_head * vs.head, vs, w.k0, keys);
    auto fetch = [&](int i) {
        fetch_query_tile<D, ROWS, QUERIES>(w, i, stages + i % STAGES * 2 * Q_BYTES, vectors + i % STAGES * 2 * QUERIES,
                                           q, qs, dout, dos, lse, delta, heads, seq);
    };
#pragma unroll
    for (int i = 0; i < STAGES - 1; ++i) {
        if (i < w.tiles) fetch(i);
        copies_issued();
    }

    // With SM90_DKV_KV_REGISTERS, each warp's keys and values as the score products'
    // A operand.
    unsigned k_frags[SM90_DKV_KV_REGISTERS(D) ? D / 16 : 1][4], v_frags[SM90_DKV_KV_REGISTERS(D) ? D / 16 : 1][4];
    if constexpr (SM90_DKV_KV_REGISTERS(D)) {
        load_a_frags<D>(k_frags, k + w.batch * ks.batch + w.kv_head * ks.head, ks.row, w.warp_key0, keys);
        load_a_frags<D>(v_frags, v + w.batch * vs.batch + w.kv_head * vs.head, vs.row, w.warp_key0, keys);
    }
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
    zero<D / 8>(dk_acc);
    zero<D / 8>(dv_acc);
    for (int i = 0; i < w.tiles; ++i) {
        const int q_start = w.q_start(i);
        // Tile i + STAGES - 1 into the stage tile i - 1 used, which every warp is done with.
        if (i + STAGES - 1 < w.tiles) fetch(i + STAGES - 1);
        copies_issued();
        stage_landed<STAGES - 1>();
        const unsigned char* q_tile = stages + (i % STAGES) * 2 * Q_BYTES;
        const unsigned char* do_tile = q_tile + Q_BYTES;
        const float* tile_lse = vectors + (i % STAGES) * 2 * QUERIES;
        const float* tile_delta = tile_lse + QUERIES;

        // Some query of the tile sees some key of this warpgroup.
        if (q_start + QUERIES - 1 + w.offset >= w.wg_key0) {
            // Transposed scores: this warpgroup's 64 keys against the tile's queries.
            float s[QUERIES / 8][4], dp[QUERIES / 8][4];
            if constexpr (SM90_DKV_KV_REGISTERS(D)) {
                score_pair_by<QUERIES>(s, dp, [&] {
                    frags_times_tile_t<D, QUERIES>(s, k_frags, q_tile);
                    frags_times_tile_t<D, QUERIES>(dp, v_frags, do_tile);
                });
            } else {
                score_pair<D, QUERIES, ROWS>(s, k_tile, q_tile, dp, v_tile, do_tile, wg * 64);
            }
            transposed_probabilities<QUERIES>(s, dp, tile_lse, tile_delta, scale_log2, w.warp_key0, q_start, keys,
                                              w.offset);
            unsigned p_frags[QUERIES / 16][4], ds_frags[QUERIES / 16][4];
            as_a<QUERIES>(p_frags, s);
            as_a<QUERIES>(ds_frags, dp);
            pin<QUERIES / 16>(p_frags);
            pin<QUERIES / 16>(ds_frags);
            pin<D / 8>(dv_acc);
            pin<D / 8>(dk_acc);
            wg_fence();
            frags_times_tile<D, QUERIES>(dv_acc, p_frags, do_tile);
            frags_times_tile<D, QUERIES>(dk_acc, ds_frags, q_tile);
            wg_commit();
            wgmma_wait<0>();
            pin<D / 8>(dv_acc);
            pin<D / 8>(dk_acc);
        }
        __syncthreads();
    }
    copies_landed<0>();
    const long long out_base = ((long long)blockIdx.y) * keys * D;
    store_rows<D>(dk + out_base, dk_acc, w.warp_key0, keys, scale, scale);
    store_rows<D>(dv + out_base, dv_acc, w.warp_key0, keys, 1.0f, 1.0f);
}

// Entry points and geometry (as ENTRY_POINTS in flash_attention.cu) for the head sizes
// this file serves.
#define SM90_ENTRY_POINTS(D)                                                                                  \
    extern "C" __device__ const int flash_geometry_##D[9] = {                                              \
        64 * SM90_FORWARD_WGS(D), WG_THREADS * SM90_FORWARD_WGS(D), SM90_FORWARD_SHARED(D),               \
        64 * SM90_DQ_WGS(D),      WG_THREADS * SM90_DQ_WGS(D),      SM90_DQ_SHARED(D),                    \
        64 * SM90_DKV_WGS(D),     WG_THREADS * SM90_DKV_WGS(D),     SM90_DKV_SHARED(D)};                  \
    extern "C" __global__ void __launch_bounds__(WG_THREADS * SM90_FORWARD_WGS(D), SM90_FORWARD_MIN_BLOCKS(D))         \
        flash_forward_##D(const bf16* q, Strides qs, const bf16* k, Strides ks, const bf16* v, Strides vs,   \
                          bf16* out, float* lse, int heads, int kv_heads, int seq, int keys, float scale,    \
                          float scale_log2) {                                                              \
        forward_sm90<D>(q, qs, k, ks, v, vs, out, lse, heads, kv_heads, seq, keys, scale_log2);            \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(WG_THREADS * SM90_DQ_WGS(D), SM90_DQ_MIN_BLOCKS(D))              \
        flash_backward_dq_##D(const bf16* q, Strides qs, const bf16* k, Strides ks, const bf16* v,          \
                              Strides vs, const bf16* out, const bf16* dout, Strides dos, const float* lse,  \
                              float* delta, bf16* dq, int heads, int kv_heads, int seq, int keys,           \
                              float scale, float scale_log2) {                                             \
        backward_dq_sm90<D>(q, qs, k, ks, v, vs, out, dout, dos, lse, delta, dq, heads, kv_heads, seq,     \
                            keys, scale, scale_log2);                                                      \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(WG_THREADS * SM90_DKV_WGS(D), SM90_DKV_MIN_BLOCKS(D))             \
        flash_backward_dkv_##D(const bf16* q, Strides qs, const bf16* k, Strides ks, const bf16* v,         \
                               Strides vs, const bf16* dout, Strides dos, const float* lse,                \
                               const float* delta, bf16* dk, bf16* dv, int heads, int kv_heads, int seq,    \
                               int keys, float scale, float scale_log2) {                                  \
        backward_dkv_sm90<D>(q, qs, k, ks, v, vs, dout, dos, lse, delta, dk, dv, heads, kv_heads, seq,     \
                             keys, scale, scale_log2);                                                     \
    }

SM90_ENTRY_POINTS(64)
SM90_ENTRY_POINTS(128)
