// The flash-attention kernels against a float64 reference, under the CPU emulation of
// cuda_emu.h (see run.sh), launched through their entry points with the geometry the
// source states: the mma.sync kernels, or with --sm90 the Hopper ones for 64 and 128. Inputs are rounded to bf16 first, as the kernels see them;
// q is a strided view ([batch, seq, heads, d] in memory), as the model passes it.
#include "kernel_emu.h"  // the kernels, rewritten for the emulation by run.sh
#include <cstdio>
#include <random>
typedef __nv_bfloat16 B;
// The entry points of head size D and the geometry the source states for them
// (rows per block, threads, shared bytes of the forward, dQ and dK/dV kernels).
struct Entries {
  decltype(&flash_forward_64) forward;
  decltype(&flash_backward_dq_64) dq;
  decltype(&flash_backward_dkv_64) dkv;
  const int* geometry;
};
#define ENTRIES(D) Entries{flash_forward_##D, flash_backward_dq_##D, flash_backward_dkv_##D, flash_geometry_##D}
template <int D> int run(Entries e, int batch, int heads, int kvh, int seq, int keys) {
  const int* g = e.geometry;
  std::mt19937 rng(7); std::normal_distribution<float> nd(0, 1);
  // q laid out [b, s, h, d] (strided view), k/v [b, kvh, keys, d] contiguous, dout [b,h,s,d]
  std::vector<B> q(batch * seq * heads * D), k(batch * kvh * keys * D), v(k.size()), dout(batch * heads * seq * D);
  for (auto& x : q) x = __float2bfloat16(nd(rng)); for (auto& x : k) x = __float2bfloat16(nd(rng));
  for (auto& x : v) x = __float2bfloat16(nd(rng)); for (auto& x : dout) x = __float2bfloat16(nd(rng));
  Strides qs{(long long)seq * heads * D, D, (long long)heads * D};
  Strides ks{(long long)kvh * keys * D, (long long)keys * D, D};
  Strides dos{(long long)heads * seq * D, (long long)seq * D, D};
  std::vector<B> out(batch * heads * seq * D), dq(out.size()), dk(k.size()), dv(k.size());
  std::vector<float> lse(batch * heads * seq), delta(lse.size());
  float scale = 1.0f / std::sqrt((float)D), sl2 = scale * 1.4426950408889634f;
  auto blocks = [](int n, int rows) { return (unsigned)((n + rows - 1) / rows); };
  launch({blocks(seq, g[0]), (unsigned)(batch * heads)}, g[2], g[1], [&] {
    e.forward(q.data(), qs, k.data(), ks, v.data(), ks, out.data(), lse.data(), heads, kvh, seq, keys, scale, sl2); });
  launch({blocks(seq, g[3]), (unsigned)(batch * heads)}, g[5], g[4], [&] {
    e.dq(q.data(), qs, k.data(), ks, v.data(), ks, out.data(), dout.data(), dos, lse.data(), delta.data(), dq.data(), heads, kvh, seq, keys, scale, sl2); });
  launch({blocks(keys, g[6]), (unsigned)(batch * kvh)}, g[8], g[7], [&] {
    e.dkv(q.data(), qs, k.data(), ks, v.data(), ks, dout.data(), dos, lse.data(), delta.data(), dk.data(), dv.data(), heads, kvh, seq, keys, scale, sl2); });
  // reference in double
  double err_o = 0, err_q = 0, err_k = 0, err_v = 0, mo = 0, mq = 0, mk = 0, mv = 0;
  std::vector<double> rdk(k.size()), rdv(k.size());
  int off = keys - seq;
  for (int b = 0; b < batch; ++b) for (int h = 0; h < heads; ++h) {
    int g = h / (heads / kvh);
    auto Q = [&](int i, int d) { return (double)__bfloat162float(q[b * qs.batch + h * qs.head + i * qs.row + d]); };
    auto K = [&](int j, int d) { return (double)__bfloat162float(k[b * ks.batch + g * ks.head + j * ks.row + d]); };
    auto V = [&](int j, int d) { return (double)__bfloat162float(v[b * ks.batch + g * ks.head + j * ks.row + d]); };
    auto G = [&](int i, int d) { return (double)__bfloat162float(dout[((b * heads + h) * seq + i) * D + d]); };
    for (int i = 0; i < seq; ++i) {
      int n = std::min(keys, i + off + 1);
      std::vector<double> s(n), p(n), dp(n); double mx = -1e300;
      for (int j = 0; j < n; ++j) { double t = 0; for (int d = 0; d < D; ++d) t += Q(i, d) * K(j, d); s[j] = t * scale; mx = std::max(mx, s[j]); }
      double sum = 0; for (int j = 0; j < n; ++j) { p[j] = std::exp(s[j] - mx); sum += p[j]; }
      for (int j = 0; j < n; ++j) p[j] /= sum;
      std::vector<double> o(D, 0); for (int j = 0; j < n; ++j) for (int d = 0; d < D; ++d) o[d] += p[j] * V(j, d);
      double dl = 0; for (int d = 0; d < D; ++d) dl += G(i, d) * o[d];
      for (int d = 0; d < D; ++d) { double got = __bfloat162float(out[((b * heads + h) * seq + i) * D + d]); err_o = std::max(err_o, std::abs(got - o[d])); mo = std::max(mo, std::abs(o[d])); }
      std::vector<double> rq(D, 0);
      for (int j = 0; j < n; ++j) {
        double t = 0; for (int d = 0; d < D; ++d) t += G(i, d) * V(j, d);
        double ds = p[j] * (t - dl) * scale;
        for (int d = 0; d < D; ++d) { rq[d] += ds * K(j, d); rdk[((b * kvh + g) * keys + j) * D + d] += ds * Q(i, d); rdv[((b * kvh + g) * keys + j) * D + d] += p[j] * G(i, d); }
      }
      for (int d = 0; d < D; ++d) { double got = __bfloat162float(dq[((b * heads + h) * seq + i) * D + d]); err_q = std::max(err_q, std::abs(got - rq[d])); mq = std::max(mq, std::abs(rq[d])); }
    }
  }
  for (size_t i = 0; i < rdk.size(); ++i) {
    err_k = std::max(err_k, std::abs(__bfloat162float(dk[i]) - rdk[i])); mk = std::max(mk, std::abs(rdk[i]));
    err_v = std::max(err_v, std::abs(__bfloat162float(dv[i]) - rdv[i])); mv = std::max(mv, std::abs(rdv[i]));
  }
  printf("b%d h%d kvh%d seq%d keys%d: out %.4f/%.3f dq %.4f/%.3f dk %.4f/%.3f dv %.4f/%.3f\n", batch, heads, kvh, seq, keys, err_o, mo, err_q, mq, err_k, mk, err_v, mv);
  // bf16 inputs, probabilities and outputs: a few roundings, well inside 2%.
  bool ok = err_o < 0.02 * mo && err_q < 0.02 * mq && err_k < 0.02 * mk && err_v < 0.02 * mv;
  if (!ok) printf("  FAILED: an error above 2%% of the largest value\n");
  return ok ? 0 : 1;
}
int main() {
  int failed = 0;
  failed |= run<64>(ENTRIES(64), 2, 4, 2, 130, 130);  // grouped heads, a short last tile
  failed |= run<64>(ENTRIES(64), 1, 2, 1, 100, 150);  // cached keys before the queries
  failed |= run<32>(ENTRIES(32), 2, 4, 2, 130, 130);
  failed |= run<128>(ENTRIES(128), 1, 2, 1, 70, 70);
  return failed;
}
