// Rotary position embedding of [batch, heads, seq, dim] queries or keys (bf16 or f32),
// forward and backward, compiled at run time by NVRTC (see cuda_rope.rs).
//
// Op by op a rotation was two slices, a negation, a concatenation, two products with
// the tables and a sum, on a head-transposed view, and its gradient as many again,
// then a copy of the gradient back into the projection's layout: on llama-1b at 16k
// tokens about 12 ms of a step (ncu). Here one thread rotates N pairs (i, i + dim / 2)
// of one row, reading the rows where they lie (any batch, head and row strides) and
// writing where the caller asks (the projection's [batch, seq, heads, dim] order, so
// that neither the attention nor the projection's backward pass copies them).
//
// The arithmetic is transformers' eager RoPE in the activations' dtype: x cos and
// rotate_half(x) sin each rounded, then their sum rounded. The gradient,
// dy cos + rotate_half^T(dy sin), is taken in f32 and rounded once.

#define THREADS 256

struct Strides {
    long long batch, head, row;
};

struct Shape {
    int batch, heads, seq, dim;
};

// The element offset of row (b, h, s) under these strides.
__device__ __forceinline__ long long row_offset(const Strides& st, long long row, const Shape& sh) {
    const long long s = row % sh.seq, bh = row / sh.seq;
    return (bh / sh.heads) * st.batch + (bh % sh.heads) * st.head + s * st.row;
}

// One thread: pairs [c N, c N + N) of row `row`, where c is the thread's chunk. BACKWARD
// takes the gradient (tables read at the partner's index), else the rotation.
template <class E, int N, bool BACKWARD>
__device__ void rope(const E* __restrict__ x, Strides xs, const E* __restrict__ cos, const E* __restrict__ sin,
                     E* __restrict__ out, Strides os, Shape sh) {
    const int half = sh.dim / 2, chunks = half / N;
    const long long id = (long long)blockIdx.x * THREADS + threadIdx.x;
    const long long rows = (long long)sh.batch * sh.heads * sh.seq;
    if (id >= rows * chunks) return;
    const long long row = id / chunks;
    const int first = (int)(id % chunks) * N;
    const E* xr = x + row_offset(xs, row, sh);
    E* outr = out + row_offset(os, row, sh);
    const long long table = (row % sh.seq) * sh.dim;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        const int i = first + k, j = i + half;
        const float a = to_float(xr[i]), b = to_float(xr[j]);
        const float ci = to_float(cos[table + i]), cj = to_float(cos[table + j]);
        const float si = to_float(sin[table + i]), sj = to_float(sin[table + j]);
        if (BACKWARD) {
            // d a = dy_i cos_i + dy_j sin_j, d b = dy_j cos_j - dy_i sin_i.
            store(&outr[i], a * ci + b * sj);
            store(&outr[j], b * cj - a * si);
        } else {
            // out_i = a cos_i - b sin_i, out_j = b cos_j + a sin_j, each product rounded.
            store(&outr[i], rounded(a * ci, E()) + rounded(-b * si, E()));
            store(&outr[j], rounded(b * cj, E()) + rounded(a * sj, E()));
        }
    }
}

// The same rotation, N = 16 / sizeof(E) pairs a thread, each read and written 16 bytes
// at a time: for rows whose strides, half-dim and pointers are whole 16-byte pieces
// (cuda_rope.rs checks), with fewer than 2^31 pieces in all (32-bit index arithmetic).
// The per-element arithmetic is the scalar kernel's, so the bits are the same; the
// scalar kernel's 2-byte accesses and 64-bit divisions ran at under 1 TB/s.
template <class E, bool BACKWARD>
__device__ void rope_wide(const E* __restrict__ x, Strides xs, const E* __restrict__ cos,
                          const E* __restrict__ sin, E* __restrict__ out, Strides os, Shape sh) {
    constexpr int N = Vec<E>::N;
    const unsigned half = sh.dim / 2, chunks = half / N;
    const unsigned id = blockIdx.x * THREADS + threadIdx.x;
    const unsigned rows = (unsigned)sh.batch * sh.heads * sh.seq;
    if (id >= rows * chunks) return;
    const unsigned row = id / chunks, first = (id % chunks) * N;
    const unsigned s = row % sh.seq, bh = row / sh.seq, b = bh / sh.heads, h = bh % sh.heads;
    const E* xr = x + (b * xs.batch + h * xs.head + s * xs.row);
    E* outr = out + (b * os.batch + h * os.head + s * os.row);
    const long long table = (long long)s * sh.dim;
    float a[N], bj[N], ci[N], cj[N], si[N], sj[N], oi[N], oj[N];
    load(xr + first, a);
    load(xr + first + half, bj);
    load(cos + table + first, ci);
    load(cos + table + first + half, cj);
    load(sin + table + first, si);
    load(sin + table + first + half, sj);
#pragma unroll
    for (int k = 0; k < N; ++k) {
        if (BACKWARD) {
            oi[k] = a[k] * ci[k] + bj[k] * sj[k];
            oj[k] = bj[k] * cj[k] - a[k] * si[k];
        } else {
            oi[k] = rounded(a[k] * ci[k], E()) + rounded(-bj[k] * si[k], E());
            oj[k] = rounded(bj[k] * cj[k], E()) + rounded(a[k] * sj[k], E());
        }
    }
    store_vec(outr + first, oi);
    store_vec(outr + first + half, oj);
}

#define ENTRY_POINTS(NAME, E)                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                   \
        rope_forward_##NAME(const E* x, Strides xs, const E* cos, const E* sin, E* out, Strides os, Shape sh) { \
        rope<E, 1, false>(x, xs, cos, sin, out, os, sh);                                                     \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                   \
        rope_backward_##NAME(const E* x, Strides xs, const E* cos, const E* sin, E* out, Strides os, Shape sh) { \
        rope<E, 1, true>(x, xs, cos, sin, out, os, sh);                                                      \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                   \
        rope_wide_forward_##NAME(const E* x, Strides xs, const E* cos, const E* sin, E* out, Strides os, Shape sh) { \
        rope_wide<E, false>(x, xs, cos, sin, out, os, sh);                                                   \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                   \
        rope_wide_backward_##NAME(const E* x, Strides xs, const E* cos, const E* sin, E* out, Strides os, Shape sh) { \
        rope_wide<E, true>(x, xs, cos, sin, out, os, sh);                                                    \
    }

ENTRY_POINTS(bf16, unsigned short)
ENTRY_POINTS(f32, float)
