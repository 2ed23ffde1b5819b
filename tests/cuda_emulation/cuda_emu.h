// Functional CPU emulation of the CUDA subset that src/compute/flash_attention.cu uses,
// for tests/cuda_emulation/run.sh. Not fast and not complete: enough to run those
// kernels on small shapes and compare them with a reference.
// How: one std::thread per CUDA thread, barriers for __syncthreads/__syncwarp; the
// warp-wide instructions (mma.sync, ldmatrix) gather every lane's registers or
// addresses in a per-warp buffer and give each lane its part, in the fragment layouts
// of the PTX ISA; cp.async copies wait in per-thread groups until a wait_group lets
// them land, the latest moment the hardware allows.
#pragma once
#define GRAFT_CUDA_EMULATION
#include <cmath>
#include <cstdint>
#include <cstring>
#include <barrier>
#include <thread>
#include <vector>
#include <functional>
#include <algorithm>
using std::min; using std::max;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __align__(x)
struct dim3 { unsigned x = 0, y = 0, z = 0; };
thread_local dim3 threadIdx, blockIdx;
dim3 gridDim;
unsigned char* g_smem;
std::barrier<>* g_block_barrier;
std::vector<std::barrier<>*> g_warp_barriers;
float g_shfl[4][32];
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline void __syncwarp() { g_warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int m) {
  int w = threadIdx.x / 32, l = threadIdx.x % 32;
  __syncwarp(); g_shfl[w][l] = v; __syncwarp();
  float r = g_shfl[w][l ^ m]; __syncwarp(); return r;
}
inline float __int_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
struct __nv_bfloat16 { uint16_t bits; };
inline float __bfloat162float(__nv_bfloat16 b) { unsigned u = unsigned(b.bits) << 16; float f; memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16(float f) {
  unsigned u; memcpy(&u, &f, 4);
  if (std::isnan(f)) return {0x7fc0};
  u += 0x7fff + ((u >> 16) & 1);
  return {uint16_t(u >> 16)};
}
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16(a), __float2bfloat16(b)}; }
inline float bf16_bits_to_float(unsigned bits) { unsigned u = (bits & 0xffff) << 16; float f; memcpy(&f, &u, 4); return f; }
// ex2.approx.ftz.f32: 2^x with subnormal results flushed to zero.
inline float fast_exp2(float x) { float y = std::exp2(x); return std::fpclassify(y) == FP_SUBNORMAL ? 0.0f : y; }
inline unsigned pack(float lo, float hi) { return __float2bfloat16(lo).bits | (unsigned(__float2bfloat16(hi).bits) << 16); }
struct MmaLane { unsigned a[4], b[2]; };
MmaLane g_mma[4][32];
const __nv_bfloat16* g_rows[4][32];
// c (16 x 8) += a (16 x 16) * b (16 x 8): lane l holds a's rows l/4 and l/4 + 8 at
// columns 2(l%4) and + 8, b's columns l/4 at rows 2(l%4) and + 8, c's rows l/4, l/4 + 8
// at columns 2(l%4), + 1.
inline void mma(float* c, const unsigned* a, const unsigned* b) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  __syncwarp();
  for (int i = 0; i < 4; ++i) g_mma[w][l].a[i] = a[i];
  for (int i = 0; i < 2; ++i) g_mma[w][l].b[i] = b[i];
  __syncwarp();
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const MmaLane& m = g_mma[w][lane];
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i % 2), col = 2 * t + 8 * (i / 2);
      A[row][col] = bf16_bits_to_float(m.a[i]);
      A[row][col + 1] = bf16_bits_to_float(m.a[i] >> 16);
    }
    for (int i = 0; i < 2; ++i) {
      B[2 * t + 8 * i][g] = bf16_bits_to_float(m.b[i]);
      B[2 * t + 8 * i + 1][g] = bf16_bits_to_float(m.b[i] >> 16);
    }
  }
  const int g = l / 4, t = l % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float s = c[i];
    for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
    c[i] = s;
  }
  __syncwarp();
}
inline unsigned bits_at(const __nv_bfloat16* p) { return p->bits; }
// Four 8x8 matrices; lane l gives row l%8 of matrix l/8 and gets, of matrix i, row
// l/4 at columns 2(l%4), + 1 (transposed: column l/4 at rows 2(l%4), + 1).
inline void ldmatrix_any(unsigned* r, const __nv_bfloat16* p, bool transposed) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32, g = l / 4, t = l % 4;
  __syncwarp();
  g_rows[w][l] = p;
  __syncwarp();
  for (int i = 0; i < 4; ++i) {
    if (transposed)
      r[i] = bits_at(g_rows[w][8 * i + 2 * t] + g) | (bits_at(g_rows[w][8 * i + 2 * t + 1] + g) << 16);
    else
      r[i] = bits_at(g_rows[w][8 * i + g] + 2 * t) | (bits_at(g_rows[w][8 * i + g] + 2 * t + 1) << 16);
  }
  __syncwarp();
}
inline void ldmatrix(unsigned* r, const __nv_bfloat16* p) { ldmatrix_any(r, p, false); }
inline void ldmatrix_t(unsigned* r, const __nv_bfloat16* p) { ldmatrix_any(r, p, true); }
struct PendingCopy { void* dst; const void* src; bool valid; };
thread_local std::vector<std::vector<PendingCopy>> t_groups;
thread_local std::vector<PendingCopy> t_open;
inline void copy16(void* dst, const void* src, bool valid) { t_open.push_back({dst, src, valid}); }
inline void copies_issued() { t_groups.push_back(std::move(t_open)); t_open.clear(); }
template <int N> void copies_landed() {
  while (t_groups.size() > size_t(N)) {
    for (auto& c : t_groups.front()) { if (c.valid) memcpy(c.dst, c.src, 16); else memset(c.dst, 0, 16); }
    t_groups.erase(t_groups.begin());
  }
}
template <class F> void launch(dim3 grid, size_t smem_bytes, F kernel) {
  gridDim = grid;
  std::vector<unsigned char> smem(smem_bytes + 256);
  for (unsigned y = 0; y < grid.y; ++y) for (unsigned x = 0; x < grid.x; ++x) {
    g_smem = smem.data(); memset(g_smem, 0xcd, smem_bytes);
    std::barrier<> block(128); g_block_barrier = &block;
    std::vector<std::barrier<>*> warps; for (int w = 0; w < 4; ++w) warps.push_back(new std::barrier<>(32));
    g_warp_barriers = warps;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < 128; ++t) threads.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = x; blockIdx.y = y; t_groups.clear(); t_open.clear(); kernel(); });
    for (auto& th : threads) th.join();
    for (auto* w : warps) delete w;
  }
}
