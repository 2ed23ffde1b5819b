// SwiGLU's gating, silu(gate) * up, forward and backward over [tokens, intermediate]
// (bf16 or f32), compiled at run time by NVRTC (see cuda_swiglu.rs).
//
// Through burn's fused element-wise kernels the gating took about 380 us forward and
// 430 us backward a layer on llama-1b at 16k tokens (ncu, H200): the sigmoid there is
// exp(-log1p(exp(-g))), three precise transcendentals an element, so the kernels were
// bound by arithmetic at half the card's bandwidth. Here the sigmoid is one MUFU.EX2 and
// an IEEE reciprocal, and each thread moves 16 bytes of every tensor at a time, so the
// passes run at the speed of their memory. The arithmetic is f32 in the fused node's
// order (`fused_swiglu.rs`), each output rounded once; no sums, so every launch gives
// the same bits.

#define THREADS 256

// 1 / (1 + e^-g): 2^(-g log2 e) flushes to 0 for large g (sigmoid 1) and reaches
// infinity for very negative g (sigmoid 0), both exact limits.
__device__ __forceinline__ float sigmoid_of(float g) { return __frcp_rn(1.0f + exp_of(-g)); }

__device__ __forceinline__ float gated(float g, float u) { return g * sigmoid_of(g) * u; }

// silu'(g) = s (1 + g (1 - s)); d gate = dy u silu'(g), d up = dy g s.
__device__ __forceinline__ void gated_gradient(float g, float u, float dy, float& dg, float& du) {
    const float s = sigmoid_of(g);
    const float slope = s * ((1.0f - s) * g + 1.0f);
    dg = dy * u * slope;
    du = dy * g * s;
}

// One thread: elements [first, first + N). `wide`: every pointer is 16-byte aligned, so
// whole pieces go 16 bytes at a time; the ragged end, or unaligned tensors, one by one.
template <class E>
__device__ void forward(const E* __restrict__ g, const E* __restrict__ u, E* __restrict__ out, long long n,
                        int wide) {
    constexpr int N = Vec<E>::N;
    const long long first = ((long long)blockIdx.x * THREADS + threadIdx.x) * N;
    if (first >= n) return;
    if (wide && first + N <= n) {
        float gv[N], uv[N], ov[N];
        load(g + first, gv);
        load(u + first, uv);
#pragma unroll
        for (int k = 0; k < N; ++k) ov[k] = gated(gv[k], uv[k]);
        store_vec(out + first, ov);
    } else {
        const long long last = first + N < n ? first + N : n;
        for (long long i = first; i < last; ++i) store(&out[i], gated(to_float(g[i]), to_float(u[i])));
    }
}

template <class E>
__device__ void backward(const E* __restrict__ g, const E* __restrict__ u, const E* __restrict__ dy,
                         E* __restrict__ dg, E* __restrict__ du, long long n, int wide) {
    constexpr int N = Vec<E>::N;
    const long long first = ((long long)blockIdx.x * THREADS + threadIdx.x) * N;
    if (first >= n) return;
    if (wide && first + N <= n) {
        float gv[N], uv[N], dyv[N], dgv[N], duv[N];
        load(g + first, gv);
        load(u + first, uv);
        load(dy + first, dyv);
#pragma unroll
        for (int k = 0; k < N; ++k) gated_gradient(gv[k], uv[k], dyv[k], dgv[k], duv[k]);
        store_vec(dg + first, dgv);
        store_vec(du + first, duv);
    } else {
        const long long last = first + N < n ? first + N : n;
        for (long long i = first; i < last; ++i) {
            float a, b;
            gated_gradient(to_float(g[i]), to_float(u[i]), to_float(dy[i]), a, b);
            store(&dg[i], a);
            store(&du[i], b);
        }
    }
}

#define ENTRY_POINTS(NAME, E)                                                                              \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                 \
        swiglu_forward_##NAME(const E* g, const E* u, E* out, long long n, int wide) {                     \
        forward<E>(g, u, out, n, wide);                                                                    \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                 \
        swiglu_backward_##NAME(const E* g, const E* u, const E* dy, E* dg, E* du, long long n, int wide) { \
        backward<E>(g, u, dy, dg, du, n, wide);                                                            \
    }

ENTRY_POINTS(bf16, unsigned short)
ENTRY_POINTS(f32, float)
