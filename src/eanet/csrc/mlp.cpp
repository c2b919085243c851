// Fused pre-norm MLP branch: y = x + drop2(fc2(drop1(gelu(fc1(LayerNorm(x)))))), rows of width d, hidden width F.
#include "ops.h"

namespace eanet_fused {

constexpr int64_t kMlpRows = 1024;

// tanh(u) = 1 - 2 / (exp(2u) + 1) with ATen's exp_u20: the bf16 mode's tanh (within ~1e-6 of the 1-ulp one;
// exp overflowing to infinity gives 1, underflowing to 0 gives -1).
inline fVec fast_tanh(const fVec& u) { return fVec(1.f) - fVec(2.f) / ((u + u).exp_u20() + fVec(1.f)); }

// a = GELU(h), tanh approximation (Keras' default) or exact erf; with `dg` also dg = GELU'(h) from the same tanh / erf
// (dg may be h itself: the backward pass keeps the derivative where h was). `fast`: fast_tanh (the bf16 mode).
inline void gelu_rows(const float* h, float* a, int64_t n, bool tanh_approx, float* dg = nullptr, bool fast = false) {
  const fVec half(0.5f), one(1.f), k0(0.7978845608028654f), k1(0.044715f), rsqrt2(0.7071067811865476f);
  const fVec k3(3.f * 0.044715f), inv_sqrt_2pi(0.3989422804014327f);
  int64_t i = 0;
  for (; i + kV <= n; i += kV) {
    fVec x = fVec::loadu(h + i);
    fVec t;
    if (tanh_approx) {
      fVec u = k0 * (x + k1 * x * x * x);
      t = fast ? fast_tanh(u) : u.tanh();
    } else {
      t = (x * rsqrt2).erf();
    }
    (half * x * (one + t)).store(a + i);
    if (dg) {
      fVec d = tanh_approx ? half * (one + t) + half * x * (one - t * t) * k0 * (one + k3 * x * x)
                           : half * (one + t) + x * inv_sqrt_2pi * (fVec(-0.5f) * x * x).exp();
      d.store(dg + i);
    }
  }
  for (; i < n; ++i) {
    const float x = h[i];
    const float t = tanh_approx ? std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x))
                                : std::erf(x * 0.7071067811865476f);
    a[i] = 0.5f * x * (1.f + t);
    if (dg) {
      dg[i] = tanh_approx
                  ? 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * 0.7978845608028654f * (1.f + 3.f * 0.044715f * x * x)
                  : 0.5f * (1.f + t) + x * 0.3989422804014327f * std::exp(-0.5f * x * x);
    }
  }
}

// g[i] *= d[i]
inline void mul_rows(float* g, const float* d, int64_t n) {
  int64_t i = 0;
  for (; i + kV <= n; i += kV) (fVec::loadu(g + i) * fVec::loadu(d + i)).store(g + i);
  for (; i < n; ++i) g[i] *= d[i];
}

// LayerNorm of rows: xhat = (x - mean) * rstd written to XH (if not null), xn = xhat * w + b written to XN.
inline void layer_norm_rows(const float* X, int64_t rows, int64_t d, const float* w, const float* b, float eps,
                            float* XN, float* mean_out, float* rstd_out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = X + r * d;
    const float mean = dot_or_sum(x, nullptr, d) / static_cast<float>(d);
    const float rstd = 1.f / std::sqrt(sum_sq_diff(x, mean, d) / static_cast<float>(d) + eps);
    if (mean_out) mean_out[r] = mean;
    if (rstd_out) rstd_out[r] = rstd;
    float* o = XN + r * d;
    for (int64_t j = 0; j < d; ++j) o[j] = (x[j] - mean) * rstd * w[j] + b[j];
  }
}

// rows of X (width W) += bias, then * dropout multipliers (elements numbered from elem0)
inline void bias_drop_inplace(float* X, int64_t rows, int64_t W, const float* bias, const Drop& drop, int64_t elem0,
                              std::vector<float>& mult, std::vector<uint64_t>& words) {
  bias_dropout_rows(X, X, rows, W, bias, drop, elem0, mult, words);
}

at::Tensor mlp_forward(const at::Tensor& x_, const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& w1,
                       const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double ln_eps,
                       int64_t tanh_gelu, double p1, double p2, const at::Tensor& seed_t, int64_t use_bf16) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto x = x_.contiguous();
  TORCH_CHECK(x.scalar_type() == at::kFloat, "mlp: float tensors only");
  const int64_t d = x.size(-1), F = w1.size(0), R = x.numel() / d;
  TORCH_CHECK(w1.sizes() == at::IntArrayRef({F, d}) && w2.sizes() == at::IntArrayRef({d, F}), "mlp weight shapes");
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const Drop d1 = make_drop(p1, seed, 4), d2 = make_drop(p2, seed, 5);
  const float eps = static_cast<float>(ln_eps);
  const bool lp = use_bf16 != 0;
  auto y = at::empty_like(x);
  auto x2 = x.view({R, d}), y2 = y.view({R, d});
  auto w1t = operand(w1, lp).t(), w2t = operand(w2, lp).t();
  const float *lw = ln_w.data_ptr<float>(), *lb = ln_b.data_ptr<float>();
  const float *pb1 = b1.data_ptr<float>(), *pb2 = b2.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  const int64_t nchunks = (R + kMlpRows - 1) / kMlpRows;
  auto XN_all = at::empty({nthreads, kMlpRows, d}, x.options());
  auto H_all = at::empty({nthreads, kMlpRows, F}, x.options());
  auto O_all = at::empty({nthreads, kMlpRows, d}, x.options());
  auto P_all = lowp_scratch(lp, nthreads, kMlpRows * std::max(d, F)), Q_all = lowp_scratch(lp, nthreads, kMlpRows * F);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
    const int tid = at::get_thread_num();
    auto XN = XN_all[tid], Hb = H_all[tid], O = O_all[tid], P = P_all[tid], Q = Q_all[tid];
    std::vector<float> mult(std::max(d, F));
    std::vector<uint64_t> words(std::max(d, F) / 4 + 2);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * kMlpRows, rows = std::min(kMlpRows, R - r0);
      auto xn = XN.narrow(0, 0, rows), hb = Hb.narrow(0, 0, rows), o = O.narrow(0, 0, rows);
      const float* xp = x2.data_ptr<float>() + r0 * d;
      layer_norm_rows(xp, rows, d, lw, lb, eps, xn.data_ptr<float>(), nullptr, nullptr);
      mm_f32(hb, operand(xn, lp, Q), w1t, P);
      float* hp = hb.data_ptr<float>();
      for (int64_t r = 0; r < rows; ++r) {
        float* h = hp + r * F;
        for (int64_t j = 0; j < F; ++j) h[j] += pb1[j];
        gelu_rows(h, h, F, tanh_gelu != 0, nullptr, lp);
      }
      if (d1.on) dropout_rows(hp, hp, rows, F, d1, r0 * F, mult, words);
      mm_f32(o, operand(hb, lp, Q), w2t, P);
      bias_drop_inplace(o.data_ptr<float>(), rows, d, pb2, d2, r0 * d, mult, words);
      const float* op = o.data_ptr<float>();
      float* yp = y2.data_ptr<float>() + r0 * d;
      for (int64_t i = 0; i < rows * d; ++i) yp[i] = xp[i] + op[i];
    }
  });
  return y;
}

std::vector<at::Tensor> mlp_backward(const at::Tensor& gy_, const at::Tensor& x_, const at::Tensor& ln_w,
                                     const at::Tensor& ln_b, const at::Tensor& w1, const at::Tensor& b1,
                                     const at::Tensor& w2, const at::Tensor& b2, double ln_eps, int64_t tanh_gelu,
                                     double p1, double p2, const at::Tensor& seed_t, int64_t use_bf16) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto x = x_.contiguous(), gy = gy_.contiguous();
  const int64_t d = x.size(-1), F = w1.size(0), R = x.numel() / d;
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const Drop d1 = make_drop(p1, seed, 4), d2 = make_drop(p2, seed, 5);
  const float eps = static_cast<float>(ln_eps);
  const bool lp = use_bf16 != 0;
  auto gx = at::empty_like(x);
  auto x2 = x.view({R, d}), gy2 = gy.view({R, d}), gx2 = gx.view({R, d});
  auto w1l = operand(w1, lp), w2l = operand(w2, lp);  // the products' operands: fp32, or bf16 copies
  const float *lw = ln_w.data_ptr<float>(), *lb = ln_b.data_ptr<float>(), *pb1 = b1.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  const int64_t nchunks = (R + kMlpRows - 1) / kMlpRows;
  const auto opt = x.options();
  auto acc_lw = at::zeros({nthreads, d}, opt), acc_lb = at::zeros({nthreads, d}, opt);
  auto acc_w1 = at::zeros({nthreads, F, d}, opt), acc_b1 = at::zeros({nthreads, F}, opt);
  auto acc_w2 = at::zeros({nthreads, d, F}, opt), acc_b2 = at::zeros({nthreads, d}, opt);
  auto XN_all = at::empty({nthreads, kMlpRows, d}, opt), H_all = at::empty({nthreads, kMlpRows, F}, opt);
  auto A_all = at::empty({nthreads, kMlpRows, F}, opt), GO_all = at::empty({nthreads, kMlpRows, d}, opt);
  auto GA_all = at::empty({nthreads, kMlpRows, F}, opt), GXN_all = at::empty({nthreads, kMlpRows, d}, opt);
  auto P_all = lowp_scratch(lp, nthreads, std::max(kMlpRows * std::max(d, F), F * d));
  auto Q_all = lowp_scratch(lp, nthreads, kMlpRows * F), XL_all = lowp_scratch(lp, nthreads, kMlpRows * d);
  auto GL_all = lowp_scratch(lp, nthreads, kMlpRows * d);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
    const int tid = at::get_thread_num();
    auto P = P_all[tid], Q = Q_all[tid], XL = XL_all[tid], GL = GL_all[tid];
    auto XN = XN_all[tid], Hb = H_all[tid], A = A_all[tid], GO = GO_all[tid], GA = GA_all[tid], GXN = GXN_all[tid];
    auto glw = acc_lw[tid], glb = acc_lb[tid], gw1 = acc_w1[tid], gb1 = acc_b1[tid], gw2 = acc_w2[tid],
         gb2 = acc_b2[tid];
    float *glwp = glw.data_ptr<float>(), *glbp = glb.data_ptr<float>();
    std::vector<float> mult(std::max(d, F)), mean(kMlpRows), rstd(kMlpRows), xhat(d), gh(d);
    std::vector<uint64_t> words(std::max(d, F) / 4 + 2);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * kMlpRows, rows = std::min(kMlpRows, R - r0);
      auto xn = XN.narrow(0, 0, rows), hb = Hb.narrow(0, 0, rows), a = A.narrow(0, 0, rows);
      auto go = GO.narrow(0, 0, rows), ga = GA.narrow(0, 0, rows), gxn = GXN.narrow(0, 0, rows);
      const float* xp = x2.data_ptr<float>() + r0 * d;
      // recompute the forward pass of the chunk
      layer_norm_rows(xp, rows, d, lw, lb, eps, xn.data_ptr<float>(), mean.data(), rstd.data());
      auto xnl = operand(xn, lp, XL);
      mm_f32(hb, xnl, w1l.t(), P);
      float* hp = hb.data_ptr<float>();
      float* ap = a.data_ptr<float>();
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < F; ++j) hp[r * F + j] += pb1[j];
        gelu_rows(hp + r * F, ap + r * F, F, tanh_gelu != 0, hp + r * F, lp);  // h <- GELU'(h)
      }
      if (d1.on) dropout_rows(ap, ap, rows, F, d1, r0 * F, mult, words);  // a = drop1(gelu(h))
      // y = x + drop2(a w2^T + b2)
      dropout_rows(go.data_ptr<float>(), gy2.data_ptr<float>() + r0 * d, rows, d, d2, r0 * d, mult, words);
      auto gol = operand(go, lp, GL);
      addmm_f32(gw2, gol.t(), operand(a, lp, Q), P);
      gb2.add_(go.sum(0));
      mm_f32(ga, gol, w2l, P);                                     // gradient of drop1(gelu(h))
      float* gap = ga.data_ptr<float>();
      if (d1.on) dropout_rows(gap, gap, rows, F, d1, r0 * F, mult, words);
      mul_rows(gap, hp, rows * F);  // through the GELU
      auto gal = operand(ga, lp, Q);
      addmm_f32(gw1, gal.t(), xnl, P);
      gb1.add_(ga.sum(0));
      mm_f32(gxn, gal, w1l, P);                                    // gradient of LayerNorm(x)
      const float* gxnp = gxn.data_ptr<float>();
      const float* gyp = gy2.data_ptr<float>() + r0 * d;
      float* gxp = gx2.data_ptr<float>() + r0 * d;
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = xp + r * d;
        const float* g = gxnp + r * d;
        for (int64_t j = 0; j < d; ++j) {
          xhat[j] = (x[j] - mean[r]) * rstd[r];
          gh[j] = g[j] * lw[j];
          glwp[j] += g[j] * xhat[j];
          glbp[j] += g[j];
        }
        const float inv_d = 1.f / static_cast<float>(d);
        const float mean_g = dot_or_sum(gh.data(), nullptr, d) * inv_d;
        const float mean_gx = dot_or_sum(gh.data(), xhat.data(), d) * inv_d;
        for (int64_t j = 0; j < d; ++j) {
          gxp[r * d + j] = gyp[r * d + j] + rstd[r] * (gh[j] - mean_g - xhat[j] * mean_gx);
        }
      }
    }
  });
  return {gx, acc_lw.sum(0), acc_lb.sum(0), acc_w1.sum(0), acc_b1.sum(0), acc_w2.sum(0), acc_b2.sum(0)};
}

}  // namespace eanet_fused
