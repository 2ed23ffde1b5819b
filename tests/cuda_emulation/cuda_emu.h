// Functional CPU emulation of the CUDA subset that src/model/flash_attention.cu uses,
// for tests/cuda_emulation/run.sh. Not fast and not complete: enough to run those
// kernels on small shapes and compare them with a reference.
// How: one std::thread
// per CUDA thread, barriers for __syncthreads/__syncwarp, WMMA fragments as full
// 16x16 matrices computed redundantly by each lane (lane 0 stores).
#pragma once
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
#define __launch_bounds__(x)
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
namespace nvcuda { namespace wmma {
struct matrix_a {}; struct matrix_b {}; struct accumulator {};
struct row_major {}; struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class L = void> struct fragment { float v[16][16]; };
template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  __syncwarp();
  for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) {
    const T& e = std::is_same<L, row_major>::value ? p[i * ldm + j] : p[j * ldm + i];
    if constexpr (std::is_same<T, float>::value) f.v[i][j] = e; else f.v[i][j] = __bfloat162float(e);
  }
  __syncwarp();
}
template <class T> void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, float x) {
  for (auto& r : f.v) for (auto& e : r) e = x;
}
template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  fragment<accumulator, 16, 16, 16, float> out;
  for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) {
    float s = c.v[i][j];
    for (int k = 0; k < 16; ++k) s += a.v[i][k] * b.v[k][j];
    out.v[i][j] = s;
  }
  d = out;
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t) {
  __syncwarp();
  if (threadIdx.x % 32 == 0) for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) p[i * ldm + j] = f.v[i][j];
  __syncwarp();
}
}}
template <class F> void launch(dim3 grid, size_t smem_bytes, F kernel) {
  gridDim = grid;
  std::vector<unsigned char> smem(smem_bytes + 256);
  for (unsigned y = 0; y < grid.y; ++y) for (unsigned x = 0; x < grid.x; ++x) {
    g_smem = smem.data(); memset(g_smem, 0xcd, smem_bytes);
    std::barrier<> block(128); g_block_barrier = &block;
    std::vector<std::barrier<>*> warps; for (int w = 0; w < 4; ++w) warps.push_back(new std::barrier<>(32));
    g_warp_barriers = warps;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < 128; ++t) threads.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = x; blockIdx.y = y; kernel(); });
    for (auto& th : threads) th.join();
    for (auto* w : warps) delete w;
  }
}
