// Functional CPU emulation of the CUDA subset that src/compute/flash_attention.cu and
// flash_attention_sm90.cu use, for tests/cuda_emulation/run.sh. Not fast and not
// complete: enough to run those kernels on small shapes and compare them with a
// reference.
// How: one std::thread per CUDA thread, barriers for __syncthreads/__syncwarp; the
// warp-wide instructions (mma.sync, ldmatrix) gather every lane's registers or
// addresses in a per-warp buffer and give each lane its part, in the fragment layouts
// of the PTX ISA; cp.async copies wait in per-thread groups until a wait_group lets
// them land, the latest moment the hardware allows. wgmma runs when it is issued (the
// kernels wait for every product before reading it): each thread computes its own
// accumulators from the shared memory its descriptors point at, in the canonical
// 128-byte-swizzled layouts of the PTX ISA, and a warpgroup's register operands are
// gathered as mma.sync's are. Shared addresses are offsets into the block's shared
// memory, which starts 1024-byte aligned.
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
dim3 gridDim, blockDim;
unsigned char* g_smem;
std::barrier<>* g_block_barrier;
std::vector<std::barrier<>*> g_warp_barriers, g_warpgroup_barriers;
float g_shfl[32][32];  // up to 1024 threads a block
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
MmaLane g_mma[8][32];
const __nv_bfloat16* g_rows[8][32];
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
struct PendingCopy { void* dst; const void* src; bool valid; int bytes; };
thread_local std::vector<std::vector<PendingCopy>> t_groups;
thread_local std::vector<PendingCopy> t_open;
inline void copy16(void* dst, const void* src, bool valid) { t_open.push_back({dst, src, valid, 16}); }
inline void copy4(void* dst, const void* src) { t_open.push_back({dst, src, true, 4}); }
inline void copies_issued() { t_groups.push_back(std::move(t_open)); t_open.clear(); }
template <int N> void copies_landed() {
  while (t_groups.size() > size_t(N)) {
    for (auto& c : t_groups.front()) { if (c.valid) memcpy(c.dst, c.src, c.bytes); else memset(c.dst, 0, c.bytes); }
    t_groups.erase(t_groups.begin());
  }
}
inline unsigned shared_address(const void* p) { return unsigned(static_cast<const unsigned char*>(p) - g_smem); }

// Hopper: wgmma and its fences. Issue order is completion order here, so the fences
// and waits have nothing to do.
inline void wg_fence() {}
inline void wg_commit() {}
template <int N> void wgmma_wait() {}
inline void proxy_fence() {}
template <int N> void pin(float (*)[4]) {}
template <int N> void pin(unsigned (*)[4]) {}
struct Desc { unsigned start, leading, stride; };
inline Desc decode(unsigned long long d) {
  return {unsigned(d & 0x3fff) << 4, unsigned((d >> 16) & 0x3fff) << 4, unsigned((d >> 32) & 0x3fff) << 4};
}
// The 128-byte swizzle: address bits 4-6 XORed with bits 7-9.
inline float smem_at(unsigned address) {
  address ^= ((address >> 7) & 7) << 4;
  uint16_t bits; memcpy(&bits, g_smem + address, 2);
  return bf16_bits_to_float(bits);
}
// K-major: element (r, k), r along M (or N), k along K; eight-row groups `stride`
// apart, rows of 128 bytes.
inline float k_major_at(Desc d, int r, int k) { return smem_at(d.start + (r / 8) * d.stride + (r % 8) * 128 + k * 2); }
// N-major B: element (k, n); 64-column atoms `leading` apart, eight-row groups `stride`.
inline float n_major_at(Desc d, int k, int n) {
  return smem_at(d.start + (n / 64) * d.leading + (k / 8) * d.stride + (k % 8) * 128 + (n % 64) * 2);
}
// Thread threadIdx.x's accumulator element e of 8-column block j: row and column in
// the warpgroup's 64 x N result.
inline int acc_row(int e) { const int tw = threadIdx.x % 128; return 16 * (tw / 32) + (tw % 32) / 4 + 8 * (e / 2); }
inline int acc_col(int j, int e) { return 8 * j + 2 * (threadIdx.x % 4) + e % 2; }
// d (+)= A (K-major) * B (K-major).
template <int N>
void wgmma_ss_emu(float (*d)[4], unsigned long long a, unsigned long long b, int accumulate) {
  const Desc A = decode(a), B = decode(b);
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = acc_row(e), col = acc_col(j, e);
      float s = accumulate ? d[j][e] : 0.0f;
      for (int k = 0; k < 16; ++k)
        s += k_major_at(A, row, k) * k_major_at(B, col, k);
      d[j][e] = s;
    }
}
unsigned g_wg_a[8][128][4];
// d += A (registers) * B, with B N-major or, K_MAJOR_B, K-major.
template <int N, bool K_MAJOR_B = false> void wgmma_rs_emu(float (*d)[4], const unsigned* a, unsigned long long b) {
  const int wg = threadIdx.x / 128, tw = threadIdx.x % 128;
  std::barrier<>* bar = g_warpgroup_barriers[wg];
  bar->arrive_and_wait();
  for (int i = 0; i < 4; ++i) g_wg_a[wg][tw][i] = a[i];
  bar->arrive_and_wait();
  // A's element (row, k): warp row / 16, lane (row % 8) * 4 + (k % 8) / 2, register
  // (row % 16) / 8 + 2 (k / 8), the high half for odd k (mma.sync's A layout).
  auto A = [&](int row, int k) {
    const unsigned r = g_wg_a[wg][32 * (row / 16) + 4 * (row % 8) + (k % 8) / 2][(row % 16) / 8 + 2 * (k / 8)];
    return bf16_bits_to_float(k % 2 ? r >> 16 : r);
  };
  const Desc B = decode(b);
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = acc_row(e), col = acc_col(j, e);
      float s = d[j][e];
      for (int k = 0; k < 16; ++k) s += A(row, k) * (K_MAJOR_B ? k_major_at(B, col, k) : n_major_at(B, k, col));
      d[j][e] = s;
    }
  bar->arrive_and_wait();
}
inline void wgmma_ss_64(float (*d)[4], unsigned long long a, unsigned long long b, int acc) { wgmma_ss_emu<64>(d, a, b, acc); }
inline void wgmma_ss_128(float (*d)[4], unsigned long long a, unsigned long long b, int acc) { wgmma_ss_emu<128>(d, a, b, acc); }
inline void wgmma_rs_64(float (*d)[4], const unsigned* a, unsigned long long b) { wgmma_rs_emu<64>(d, a, b); }
inline void wgmma_rs_128(float (*d)[4], const unsigned* a, unsigned long long b) { wgmma_rs_emu<128>(d, a, b); }
inline void wgmma_rs_k_64(float (*d)[4], const unsigned* a, unsigned long long b) { wgmma_rs_emu<64, true>(d, a, b); }
inline void wgmma_rs_k_128(float (*d)[4], const unsigned* a, unsigned long long b) { wgmma_rs_emu<128, true>(d, a, b); }

template <class F> void launch(dim3 grid, size_t smem_bytes, unsigned block_threads, F kernel) {
  gridDim = grid;
  blockDim = {block_threads, 1, 1};
  std::vector<unsigned char> storage(smem_bytes + 2048);
  // 1024-byte aligned, as the swizzle's arithmetic on shared addresses assumes.
  unsigned char* base = storage.data() + ((1024 - reinterpret_cast<uintptr_t>(storage.data()) % 1024) % 1024);
  for (unsigned y = 0; y < grid.y; ++y) for (unsigned x = 0; x < grid.x; ++x) {
    g_smem = base; memset(g_smem, 0xcd, smem_bytes);
    std::barrier<> block(block_threads); g_block_barrier = &block;
    std::vector<std::barrier<>*> warps, groups;
    for (unsigned w = 0; w < block_threads / 32; ++w) warps.push_back(new std::barrier<>(32));
    for (unsigned w = 0; w < (block_threads + 127) / 128; ++w) groups.push_back(new std::barrier<>(std::min(128u, block_threads)));
    g_warp_barriers = warps; g_warpgroup_barriers = groups;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block_threads; ++t) threads.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = x; blockIdx.y = y; t_groups.clear(); t_open.clear(); kernel(); });
    for (auto& th : threads) th.join();
    for (auto* w : warps) delete w;
    for (auto* w : groups) delete w;
  }
}
