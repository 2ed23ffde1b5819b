// Element helpers graft's kernels share (cuda_loss.cu, cuda_norm.cu, cuda_rope.cu,
// cuda_swiglu.cu, dequantize.cu), prepended to each source before NVRTC compiles it. bf16 travels as its 16 bits in an
// unsigned short; every kernel computes in f32.

__device__ __forceinline__ float to_float(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ float to_float(float x) { return x; }

// f32 to bf16, to nearest even, a NaN kept quiet.
__device__ __forceinline__ unsigned short round_bf16(float x) {
    const unsigned bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x40u);
    return (unsigned short)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
// x rounded to the element type, as a float.
__device__ __forceinline__ float rounded(float x, unsigned short) { return to_float(round_bf16(x)); }
__device__ __forceinline__ float rounded(float x, float) { return x; }
__device__ __forceinline__ void store(unsigned short* p, float x) { *p = round_bf16(x); }
__device__ __forceinline__ void store(float* p, float x) { *p = x; }

// Values a 16-byte access moves.
template <class E>
struct Vec {
    static constexpr int N = 16 / sizeof(E);
};

// A 16-byte load's values as floats.
__device__ __forceinline__ void unpack(uint4 raw, float* out, unsigned short) {
    const unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ void unpack(uint4 raw, float* out, float) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
}

// N values from p (16-byte aligned) as floats, and back, rounding each once.
template <class E>
__device__ __forceinline__ void load(const E* p, float* v) {
    unpack(*reinterpret_cast<const uint4*>(p), v, E());
}
__device__ __forceinline__ void store_vec(unsigned short* p, const float* v) {
    uint4 raw;
    raw.x = round_bf16(v[0]) | ((unsigned)round_bf16(v[1]) << 16);
    raw.y = round_bf16(v[2]) | ((unsigned)round_bf16(v[3]) << 16);
    raw.z = round_bf16(v[4]) | ((unsigned)round_bf16(v[5]) << 16);
    raw.w = round_bf16(v[6]) | ((unsigned)round_bf16(v[7]) << 16);
    *reinterpret_cast<uint4*>(p) = raw;
}
__device__ __forceinline__ void store_vec(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}

#define LOG2E 1.4426950408889634f

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// 2^x, flushing subnormal results to zero: one MUFU.EX2.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// exp(d) as 2^(d log2 e). The argument is formed first, in f32, so that it loses no
// more than its own rounding (the loss passes a difference of logits).
__device__ __forceinline__ float exp_of(float d) { return fast_exp2(d * LOG2E); }
