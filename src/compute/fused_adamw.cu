// AdamW with global-norm clipping over many f32 tensors in a few launches, compiled
// at run time by NVRTC (see fused_adamw.rs).
//
// Op by op, one step over LoRA's 224 small matrices was about 700 separate kernels
// (copies into one flat tensor, the norm, the update, the copies back), each costing
// more to issue than to run. Here each launch covers up to MAX_TENSORS tensors
// through a table passed by value; the moments are the optimizer's flat tensors.
//
// Sums run in a fixed order (per block, then over the blocks' partials in one
// block), so the same gradients give the same bits on every run.

#define MAX_TENSORS 48
#define CHUNK 4096
#define THREADS 256

struct TensorList {
    const float* param[MAX_TENSORS];
    const float* grad[MAX_TENSORS];
    float* out[MAX_TENSORS];
    long long offset[MAX_TENSORS];  // of each tensor in the flat moments
    long long len[MAX_TENSORS];
    int count;
    int first;  // index of the list's first tensor among all tensors
};

// Tree sum of one value per thread, in a fixed order; thread 0 gets the total.
__device__ float block_sum(float value, float* shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int width = THREADS / 2; width > 0; width /= 2) {
        if (threadIdx.x < width) shared[threadIdx.x] += shared[threadIdx.x + width];
        __syncthreads();
    }
    return shared[0];
}

// partials[(first + y) * chunks + x] = sum of (scale * grad)^2 over chunk x of tensor y
// (zero past its end). Grid: (chunks, count).
extern "C" __global__ void __launch_bounds__(THREADS)
    sum_squares(TensorList list, float scale, float* partials, int chunks) {
    __shared__ float shared[THREADS];
    const int t = blockIdx.y;
    const long long start = (long long)blockIdx.x * CHUNK;
    const long long end = min(start + CHUNK, list.len[t]);
    float sum = 0.0f;
    for (long long i = start + threadIdx.x; i < end; i += THREADS) {
        const float g = list.grad[t][i] * scale;
        sum += g * g;
    }
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) partials[(long long)(list.first + blockIdx.y) * chunks + blockIdx.x] = sum;
}

// norm = sqrt(sum of partials); factor = min(1, clip / (norm + 1e-6)), or 1 without
// clipping. One block.
extern "C" __global__ void __launch_bounds__(THREADS)
    clip_factor(const float* partials, int count, float clip, float* norm, float* factor) {
    __shared__ float shared[THREADS];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < count; i += THREADS) sum += partials[i];
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) {
        const float n = sqrtf(sum);
        norm[0] = n;
        factor[0] = clip > 0.0f ? fminf(1.0f, clip / (n + 1e-6f)) : 1.0f;
    }
}

struct Hyper {
    float scale, lr, beta1, beta2, eps, decay, correction1, correction2;
};

// One AdamW update of chunk x of tensor y, with the gradient times scale and the clip
// factor; writes the new parameter and moments. Grid: (chunks, count).
extern "C" __global__ void __launch_bounds__(THREADS)
    adamw(TensorList list, Hyper h, const float* factor, const float* m, const float* v, float* m_out,
          float* v_out) {
    const int t = blockIdx.y;
    const long long start = (long long)blockIdx.x * CHUNK;
    const long long end = min(start + CHUNK, list.len[t]);
    const float f = factor[0] * h.scale;
    const float* param = list.param[t];
    const float* grad = list.grad[t];
    float* out = list.out[t];
    const long long base = list.offset[t];
    for (long long i = start + threadIdx.x; i < end; i += THREADS) {
        const float g = grad[i] * f;
        const float m1 = m[base + i] * h.beta1 + g * (1.0f - h.beta1);
        const float v1 = v[base + i] * h.beta2 + g * g * (1.0f - h.beta2);
        const float update = (m1 / h.correction1) / (sqrtf(v1 / h.correction2) + h.eps);
        out[i] = param[i] * h.decay - update * h.lr;
        m_out[base + i] = m1;
        v_out[base + i] = v1;
    }
}
