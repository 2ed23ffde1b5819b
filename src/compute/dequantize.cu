// A quantized base weight (NF4 or int8 codes, per-block scales, optionally
// double-quantized) dequantized into bf16 or f32 in one pass, compiled at run time by
// NVRTC (see dequantize.rs).
//
// Op by op the same dequantization was about a dozen kernels and three full-size f32
// intermediates for every projection, twice or three times a step. Here each thread
// reads one word of codes and writes its values once.
//
// The arithmetic is the host reference's (model::quantize::QuantizedHost::dequantize),
// rounding step by step with no fused multiply-add: a block's scale is
// map[code] * nested_absmax + offset (double quantization) or the stored f32, and a
// value is table[code] * scale (NF4) or (byte - 128) * scale (int8), in f32, then
// rounded to bf16 to nearest even (cuda_elements.cuh's round_bf16).

struct Layout {
    long long len;       // values of the weight, out * in
    long long words;     // words of codes (four bytes each)
    int nf4;             // 1: two codes a byte (high nibble first); 0: int8 + 128
    int block;           // values a block; a multiple of 8
    int nested_block;    // blocks a nested block (double quantization), else 0
    float offset;        // added to every double-quantized scale
    int bf16;            // 1: write bf16; 0: write f32
};

__device__ __forceinline__ float block_scale(long long b, const float* scales,
                                             const unsigned char* scale_codes,
                                             const float* scale_map, const Layout& l) {
    if (l.nested_block == 0) return scales[b];
    const float nested = scales[b / l.nested_block];
    return __fadd_rn(__fmul_rn(scale_map[scale_codes[b]], nested), l.offset);
}

// pairs: NF4's [256, 2] table (row b holds the values of b >> 4 and b & 15); unused for
// int8. out: [len] values. Each thread takes one word: 8 NF4 values or 4 int8 values,
// all in one block since the block is a multiple of 8.
extern "C" __global__ void __launch_bounds__(256)
    dequantize(const unsigned int* words, const float* pairs, const float* scales,
               const unsigned char* scale_codes, const float* scale_map, Layout l, void* out) {
    __shared__ float table[512];
    if (l.nf4) {
        for (int i = threadIdx.x; i < 512; i += blockDim.x) table[i] = pairs[i];
        __syncthreads();
    }
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long w = (long long)blockIdx.x * blockDim.x + threadIdx.x; w < l.words; w += stride) {
        const unsigned int word = words[w];
        const int per_word = l.nf4 ? 8 : 4;
        const long long first = w * per_word;
        if (first >= l.len) continue;
        const float scale = block_scale(first / l.block, scales, scale_codes, scale_map, l);
        float v[8];
        for (int k = 0; k < 4; k++) {
            const unsigned int byte = (word >> (8 * k)) & 0xffu;
            if (l.nf4) {
                v[2 * k] = __fmul_rn(table[2 * byte], scale);
                v[2 * k + 1] = __fmul_rn(table[2 * byte + 1], scale);
            } else {
                v[k] = __fmul_rn((float)((int)byte - 128), scale);
            }
        }
        const int count = (int)min((long long)per_word, l.len - first);
        if (l.bf16) {
            unsigned short* o = (unsigned short*)out + first;
            if (count == 8 && ((unsigned long long)o & 15) == 0) {
                store_vec(o, v);
            } else {
                for (int k = 0; k < count; k++) store(&o[k], v[k]);
            }
        } else {
            float* o = (float*)out + first;
            for (int k = 0; k < count; k++) o[k] = v[k];
        }
    }
}
