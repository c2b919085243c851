// Fused multi-head self-attention (the ViT baseline's token mixer). qkv is the (B, N, 3 * H * D) output of the input
// projection: q, k and v, each H heads of D channels. For one (sample, head) at a time: S = q k^T (N x N),
// P = softmax(scale * S) over the keys, dropout on P, out = P v. The N x N map stays in the core's cache, and the
// backward pass recomputes it from q, k and the saved log-sum-exp of each row: no (B, H, N, N) tensor is stored.
#include "ops.h"

namespace eanet_fused {

// x <- softmax(scale * x) over one row of n logits, in place; returns the row's log-sum-exp of scale * x.
inline float softmax_row(float* x, int64_t n, float scale) {
  int64_t j = 0;
  float m = -std::numeric_limits<float>::infinity();
  if (n >= kV) {
    fVec mv(m);
    for (; j + kV <= n; j += kV) mv = at::vec::maximum(mv, fVec::loadu(x + j));
    m = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return at::vec::maximum(a, b); }, mv);
  }
  for (; j < n; ++j) m = std::max(m, x[j]);
  const float shift = scale * m;
  const fVec sv(scale), hv(shift);
  float sum = 0.f;
  j = 0;
  if (n >= kV) {
    fVec acc(0.f);
    for (; j + kV <= n; j += kV) {
      fVec e = (fVec::loadu(x + j) * sv - hv).exp();
      e.store(x + j);
      acc = acc + e;
    }
    sum = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, acc);
  }
  for (; j < n; ++j) {
    x[j] = std::exp(x[j] * scale - shift);
    sum += x[j];
  }
  const float inv = 1.f / sum;
  const fVec iv(inv);
  for (j = 0; j + kV <= n; j += kV) (fVec::loadu(x + j) * iv).store(x + j);
  for (; j < n; ++j) x[j] *= inv;
  return shift + std::log(sum);
}

struct SaDims {
  int64_t B, N, H, D;
};

SaDims sa_check(const at::Tensor& qkv, int64_t heads) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.scalar_type() == at::kFloat && qkv.is_contiguous(),
              "qkv: contiguous float (B, N, 3 * heads * head_dim)");
  TORCH_CHECK(heads > 0 && qkv.size(2) % (3 * heads) == 0, "qkv width must be 3 * heads * head_dim");
  return {qkv.size(0), qkv.size(1), heads, qkv.size(2) / (3 * heads)};
}

// rows of an (N, D) block into the (N, H * D) layout of the output (or (N, 3 * H * D) of qkv's gradient)
inline void scatter_rows(const float* src, float* dst, int64_t N, int64_t D, int64_t dst_stride) {
  for (int64_t i = 0; i < N; ++i) std::copy(src + i * D, src + (i + 1) * D, dst + i * dst_stride);
}

std::tuple<at::Tensor, at::Tensor> sa_forward(const at::Tensor& qkv, int64_t heads, double scale_, double p,
                                              const at::Tensor& seed_t, int64_t use_bf16) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const SaDims sd = sa_check(qkv, heads);
  const int64_t B = sd.B, N = sd.N, H = sd.H, D = sd.D;
  const float scale = static_cast<float>(scale_);
  const Drop dr = make_drop(p, static_cast<uint64_t>(seed_t.item<int64_t>()), 6);
  const auto opt = qkv.options();
  auto out = at::empty({B, N, H * D}, opt);
  auto lse = at::empty({B, H, N}, opt);
  const bool lp = use_bf16 != 0;
  auto qkv5 = operand(qkv, lp).view({B, N, 3, H, D});  // the products' operands: fp32, or a bf16 copy
  float* outp = out.data_ptr<float>();
  float* lsep = lse.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  auto S_all = at::empty({nthreads, N, N}, opt), O_all = at::empty({nthreads, N, D}, opt);
  auto P_all = lowp_scratch(lp, nthreads, N * std::max(N, D)), Q_all = lowp_scratch(lp, nthreads, N * N);
  at::parallel_for(0, B * H, 1, [&](int64_t u0, int64_t u1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
    const int tid = at::get_thread_num();
    auto Sm = S_all[tid], Ob = O_all[tid], P = P_all[tid], Q = Q_all[tid];
    float* sp = Sm.data_ptr<float>();
    std::vector<float> mult(N);
    std::vector<uint64_t> words(N / 4 + 2);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / H, h = u % H;
      auto sample = qkv5.select(0, b);  // (N, 3, H, D)
      auto q = sample.select(1, 0).select(1, h), k = sample.select(1, 1).select(1, h);
      auto v = sample.select(1, 2).select(1, h);
      mm_f32(Sm, q, k.t(), P);
      for (int64_t i = 0; i < N; ++i) lsep[u * N + i] = softmax_row(sp + i * N, N, scale);
      if (dr.on) dropout_rows(sp, sp, N, N, dr, u * N * N, mult, words);
      mm_f32(Ob, operand(Sm, lp, Q), v, P);
      scatter_rows(Ob.data_ptr<float>(), outp + b * N * H * D + h * D, N, D, H * D);
    }
  });
  return {out, lse};
}

at::Tensor sa_backward(const at::Tensor& gout_, const at::Tensor& qkv, const at::Tensor& out_,
                       const at::Tensor& lse_, int64_t heads, double scale_, double p, const at::Tensor& seed_t,
                       int64_t use_bf16) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const SaDims sd = sa_check(qkv, heads);
  const int64_t B = sd.B, N = sd.N, H = sd.H, D = sd.D;
  auto gout = gout_.contiguous(), out = out_.contiguous(), lse = lse_.contiguous();
  TORCH_CHECK(gout.sizes() == at::IntArrayRef({B, N, H * D}) && out.sizes() == gout.sizes(), "gradient shape");
  const float scale = static_cast<float>(scale_);
  const Drop dr = make_drop(p, static_cast<uint64_t>(seed_t.item<int64_t>()), 6);
  const auto opt = qkv.options();
  const bool lp = use_bf16 != 0;
  auto gqkv = at::empty_like(qkv);
  auto qkv5 = operand(qkv, lp).view({B, N, 3, H, D}), go4 = operand(gout, lp).view({B, N, H, D});
  const float *gop = gout.data_ptr<float>(), *outp = out.data_ptr<float>(), *lsep = lse.data_ptr<float>();
  float* gp = gqkv.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  auto S_all = at::empty({nthreads, N, N}, opt), G_all = at::empty({nthreads, N, N}, opt);
  auto P_all = at::empty({nthreads, N, N}, opt), T_all = at::empty({nthreads, N, D}, opt);
  auto X_all = lowp_scratch(lp, nthreads, N * std::max(N, D)), Y_all = lowp_scratch(lp, nthreads, N * N);
  at::parallel_for(0, B * H, 1, [&](int64_t u0, int64_t u1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
    const int tid = at::get_thread_num();
    auto Sm = S_all[tid], Gm = G_all[tid], Pm = P_all[tid], Tm = T_all[tid], X = X_all[tid], Y = Y_all[tid];
    float *sp = Sm.data_ptr<float>(), *gmp = Gm.data_ptr<float>(), *pp = Pm.data_ptr<float>();
    const float* tp = Tm.data_ptr<float>();
    std::vector<float> mult(N, 1.f), rowdot(N);
    std::vector<uint64_t> words(N / 4 + 2);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / H, h = u % H;
      auto sample = qkv5.select(0, b);
      auto q = sample.select(1, 0).select(1, h), k = sample.select(1, 1).select(1, h);
      auto v = sample.select(1, 2).select(1, h);
      auto go = go4.select(0, b).select(1, h);  // (N, D)
      // sum_j P_ij dP_ij = gout_i . out_i (dropout included): the softmax backward's row term
      for (int64_t i = 0; i < N; ++i) {
        const int64_t at_row = (b * N + i) * H * D + h * D;
        rowdot[i] = dot_or_sum(gop + at_row, outp + at_row, D);
      }
      mm_f32(Sm, q, k.t(), X);   // logits again
      mm_f32(Gm, go, v.t(), X);  // gradient of the dropped probabilities
      const fVec sv(scale);
      for (int64_t i = 0; i < N; ++i) {
        const float* s = sp + i * N;
        float* g = gmp + i * N;
        float* pd = pp + i * N;
        if (dr.on) drop_mult(dr, (u * N + i) * N, N, mult.data(), words);
        const float l = lsep[u * N + i], r = rowdot[i];
        const fVec lv(l), rv(r);
        int64_t j = 0;
        for (; j + kV <= N; j += kV) {
          fVec pr = (fVec::loadu(s + j) * sv - lv).exp();
          fVec mu = fVec::loadu(mult.data() + j);
          (pr * mu).store(pd + j);
          (pr * (fVec::loadu(g + j) * mu - rv) * sv).store(g + j);
        }
        for (; j < N; ++j) {
          const float pr = std::exp(s[j] * scale - l);
          pd[j] = pr * mult[j];
          g[j] = pr * (g[j] * mult[j] - r) * scale;
        }
      }
      float* gsample = gp + b * N * 3 * H * D;
      auto Gl = operand(Gm, lp, Y);
      mm_f32(Tm, Gl, k, X);  // dq = dS k
      scatter_rows(tp, gsample + h * D, N, D, 3 * H * D);
      mm_f32(Tm, Gl.t(), q, X);  // dk = dS^T q
      scatter_rows(tp, gsample + (H + h) * D, N, D, 3 * H * D);
      mm_f32(Tm, operand(Pm, lp, Y).t(), go, X);  // dv = P_dropped^T gout
      scatter_rows(tp, gsample + (2 * H + h) * D, N, D, 3 * H * D);
    }
  });
  return gqkv;
}

}  // namespace eanet_fused
