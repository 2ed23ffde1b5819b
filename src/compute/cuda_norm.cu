// RMSNorm over the last dimension of [rows, width] activations (bf16 or f32), forward
// and backward, compiled at run time by NVRTC (see cuda_norm.rs).
//
// Op by op a norm was a reduction launched with 64 blocks for the whole activation, a
// broadcast product that is not vectorized and another product forward, and about as
// many kernels backward: on llama-1b at 16k tokens, 18 ms of a 477 ms step (ncu).
// Here one warp norms a row: it reads the row once for the sum of squares and again
// (from cache) to write it, and the backward pass reads x and dy once and writes dx.
//
// The arithmetic is transformers' LlamaRMSNorm: the mean of squares and the normed row
// in f32, the normed row rounded to the activations' dtype, then times the weight
// (rounded again); Gemma's `1 + w` multiplies the f32 normed row before its one
// rounding. Every sum runs in an order fixed by the shape, so a launch repeats to the
// bit; the weight's gradient sums fixed chunks of rows, then the chunks in order.

#define WARPS 8
#define THREADS (WARPS * 32)
// Rows per partial sum of the weight's gradient.
#define CHUNK_ROWS 64

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}

// The n values of p from i as floats: one 16-byte load (n = N) or one element.
template <class E>
__device__ __forceinline__ void read_piece(const E* p, long long i, int n, float* v) {
    if (n == Vec<E>::N) {
        load(p + i, v);
    } else {
        v[0] = to_float(p[i]);
    }
}

// Calls f(first index, values, count) over a row in pieces a lane reads: N values at
// a time where the row is a whole number of 16-byte pieces and aligned, else one.
template <class E, class F>
__device__ __forceinline__ void each_piece(const E* row, long long width, bool vectorized, int lane, F f) {
    constexpr int N = Vec<E>::N;
    if (vectorized) {
        for (long long i = (long long)lane * N; i < width; i += 32 * N) {
            float v[N];
            read_piece(row, i, N, v);
            f(i, v, N);
        }
    } else {
        for (long long i = lane; i < width; i += 32) {
            float v[N];
            read_piece(row, i, 1, v);
            f(i, v, 1);
        }
    }
}

// Whether every row of these buffers can be read 16 bytes at a time.
template <class E>
__device__ __forceinline__ bool aligned(long long width, const void* a, const void* b, const void* c, const void* d) {
    const unsigned long long bits = (unsigned long long)a | (unsigned long long)b | (unsigned long long)c |
                                    (unsigned long long)d;
    return width % Vec<E>::N == 0 && (bits & 15) == 0;
}

// The factors applied to normed elements [i, i + n): w, or Gemma's 1 + w.
template <class E>
__device__ __forceinline__ void factors(const E* w, long long i, int n, int plus_one, float* f) {
    read_piece(w, i, n, f);
    for (int k = 0; k < n; ++k) f[k] = plus_one ? 1.0f + f[k] : f[k];
}

// Writes n values from i: one 16-byte store or one element.
template <class E>
__device__ __forceinline__ void put(E* row, long long i, int n, const float* v) {
    if (n == Vec<E>::N) {
        store_vec(row + i, v);
    } else {
        store(row + i, v[0]);
    }
}

// out = rounded(x r) w (Gemma: x r (1 + w), rounded once), r = 1 / sqrt(mean(x²) + eps),
// kept per row in inverse for the backward pass.
template <class E>
__device__ void norm_forward(const E* __restrict__ x, const E* __restrict__ w, E* __restrict__ out,
                             float* __restrict__ inverse, long long rows, long long width, float eps, int plus_one) {
    constexpr int N = Vec<E>::N;
    const long long row = (long long)blockIdx.x * WARPS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const bool vec = aligned<E>(width, x, w, out, out);
    const E* xr = x + row * width;
    E* yr = out + row * width;
    float squares = 0.0f;
    each_piece(xr, width, vec, lane, [&](long long, const float* v, int n) {
        for (int k = 0; k < n; ++k) squares = fmaf(v[k], v[k], squares);
    });
    const float r = rsqrtf(warp_sum(squares) / (float)width + eps);
    if (lane == 0) inverse[row] = r;
    each_piece(xr, width, vec, lane, [&](long long i, const float* v, int n) {
        float f[N], y[N];
        factors(w, i, n, plus_one, f);
        for (int k = 0; k < n; ++k) {
            const float normed = v[k] * r;
            y[k] = plus_one ? normed * f[k] : rounded(normed, E()) * f[k];
        }
        put(yr, i, n, y);
    });
}

// dx = r g - x r³ (g · x) / width with g = dy w (Gemma: dy (1 + w)), per row.
template <class E>
__device__ void norm_backward(const E* __restrict__ x, const E* __restrict__ w, const float* __restrict__ inverse,
                              const E* __restrict__ dy, E* __restrict__ dx, long long rows, long long width,
                              int plus_one) {
    constexpr int N = Vec<E>::N;
    const long long row = (long long)blockIdx.x * WARPS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const bool vec = aligned<E>(width, x, w, dy, dx);
    const E* xr = x + row * width;
    const E* dyr = dy + row * width;
    E* dxr = dx + row * width;
    // g = dy w, from a piece of dy.
    auto gradient = [&](long long i, const float* d, int n, float* g) {
        factors(w, i, n, plus_one, g);
        for (int k = 0; k < n; ++k) g[k] *= d[k];
    };
    float dot = 0.0f;
    each_piece(dyr, width, vec, lane, [&](long long i, const float* d, int n) {
        float g[N], v[N];
        gradient(i, d, n, g);
        read_piece(xr, i, n, v);
        for (int k = 0; k < n; ++k) dot = fmaf(g[k], v[k], dot);
    });
    const float r = inverse[row];
    const float pull = r * r * r * warp_sum(dot) / (float)width;
    each_piece(dyr, width, vec, lane, [&](long long i, const float* d, int n) {
        float g[N], v[N];
        gradient(i, d, n, g);
        read_piece(xr, i, n, v);
        for (int k = 0; k < n; ++k) g[k] = r * g[k] - v[k] * pull;
        put(dxr, i, n, g);
    });
}

// partials[chunk, i] = Σ over the chunk's rows, in order, of dy (x r): one thread a column.
template <class E>
__device__ void norm_weight_partials(const E* __restrict__ x, const float* __restrict__ inverse,
                                     const E* __restrict__ dy, float* __restrict__ partials, long long rows,
                                     long long width) {
    const long long i = (long long)blockIdx.x * THREADS + threadIdx.x;
    const long long chunk = blockIdx.y;
    if (i >= width) return;
    const long long first = chunk * CHUNK_ROWS, last = first + CHUNK_ROWS < rows ? first + CHUNK_ROWS : rows;
    float sum = 0.0f;
    for (long long row = first; row < last; ++row)
        sum += to_float(dy[row * width + i]) * (to_float(x[row * width + i]) * inverse[row]);
    partials[chunk * width + i] = sum;
}

// dw[i] = Σ over chunks, in order, of partials[chunk, i], in f32.
extern "C" __global__ void __launch_bounds__(THREADS)
    norm_weight_sum(const float* __restrict__ partials, float* __restrict__ dw, long long chunks, long long width) {
    const long long i = (long long)blockIdx.x * THREADS + threadIdx.x;
    if (i >= width) return;
    float sum = 0.0f;
    for (long long c = 0; c < chunks; ++c) sum += partials[c * width + i];
    dw[i] = sum;
}

#define ENTRY_POINTS(NAME, E)                                                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                      \
        norm_forward_##NAME(const E* x, const E* w, E* out, float* inverse, long long rows, long long width,    \
                            float eps, int plus_one) {                                                          \
        norm_forward<E>(x, w, out, inverse, rows, width, eps, plus_one);                                        \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                      \
        norm_backward_##NAME(const E* x, const E* w, const float* inverse, const E* dy, E* dx, long long rows, \
                             long long width, int plus_one) {                                                   \
        norm_backward<E>(x, w, inverse, dy, dx, rows, width, plus_one);                                         \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                      \
        norm_weight_partials_##NAME(const E* x, const float* inverse, const E* dy, float* partials,             \
                                    long long rows, long long width) {                                          \
        norm_weight_partials<E>(x, inverse, dy, partials, rows, width);                                         \
    }

ENTRY_POINTS(bf16, unsigned short)
ENTRY_POINTS(f32, float)
