// Fused external attention for the CPU: Linear(d, G) -> double normalisation -> dropout -> Linear(G, d) -> dropout,
// processed a few samples at a time so that the (rows x G) attention map never leaves the core's cache.
#include "ops.h"

namespace eanet_fused {

at::Tensor ea_forward(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_out,
                      const at::Tensor& b_out, int64_t heads, double eps_, double p_attn, double p_proj,
                      const at::Tensor& seed_t, int64_t use_bf16) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain kernels: gradients are computed by ea_backward
  const Dims D = check(x, w_in, b_in, w_out, b_out, heads);
  const int64_t B = D.B, N = D.N, d = D.d, G = D.G, S = D.S;
  const float eps = static_cast<float>(eps_);
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const Drop da = make_drop(p_attn, seed, 1), dp = make_drop(p_proj, seed, 2);
  const bool lp = use_bf16 != 0;
  auto y = at::empty({B, N, d}, x.options());
  auto x2 = x.view({B * N, d}), y2 = y.view({B * N, d});
  auto xl = operand(x2, lp);  // the products' operands: fp32, or bf16 copies
  auto wt_in = operand(w_in, lp).t(), wt_out = operand(w_out, lp).t();
  const float* bin = b_in.data_ptr<float>();
  const float* bout = b_out.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();

  if (B >= nthreads) {  // samples in parallel, a chunk of whole samples per step, each thread single-threaded
    const int64_t spc = std::max<int64_t>(1, std::min<int64_t>(B, kChunkRows / std::max<int64_t>(N, 1)));
    const int64_t nchunks = (B + spc - 1) / spc;
    // scratch of every thread allocated here, on the calling thread (where memory profilers look)
    auto L_all = at::empty({nthreads, spc * N, G}, x.options());
    auto P_all = lowp_scratch(lp, nthreads, spc * N * std::max(G, d)), Q_all = lowp_scratch(lp, nthreads, spc * N * G);
    at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;  // dispatch state is per thread
      const int tid = at::get_thread_num();
      auto L = L_all[tid], P = P_all[tid], Q = Q_all[tid];
      std::vector<float> m(G), s(G), rs(G), mult(d);
      RowScratch sc(G);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t b0 = c * spc, nb = std::min(spc, B - b0), rows = nb * N;
        auto Lc = L.narrow(0, 0, rows);
        // logits: fp32 straight into L; bf16: the product stays in P and col_max widens it into L
        auto Lout = lp ? as_matrix(P, rows, G) : Lc;
        at::mm_out(Lout, xl.narrow(0, b0 * N, rows), wt_in);
        for (int64_t i = 0; i < nb; ++i) {
          float* p = L.data_ptr<float>() + i * N * G;
          std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
          std::fill(s.begin(), s.end(), 0.f);
          col_max(p, N, G, bin, m.data(), lp ? P.data_ptr<bf16>() + i * N * G : nullptr);
          exp_sum(p, N, G, m.data(), s.data(), lp);
          for (int64_t g = 0; g < G; ++g) rs[g] = 1.f / s[g];
          normalize_rows(p, N, G, S, rs.data(), eps, nullptr, lp ? nullptr : p, da, (b0 + i) * N * G, sc,
                         lp ? Q.data_ptr<bf16>() + i * N * G : nullptr, lp);
        }
        auto yc = y2.narrow(0, b0 * N, rows);
        mm_f32(yc, lp ? as_matrix(Q, rows, G) : Lc, wt_out, P);
        float* yp = yc.data_ptr<float>();
        bias_dropout_rows(yp, yp, rows, d, bout, dp, b0 * N * d, mult, sc.words);
      }
    });
    return y;
  }

  // few samples: one at a time, matrix products multi-threaded, row blocks in parallel
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(nthreads, N));
  auto L = at::empty({N, G}, x.options());
  float* Lp = L.data_ptr<float>();
  auto P = lowp_scratch(lp, 1, N * std::max(G, d))[0], Q = lowp_scratch(lp, 1, N * G)[0];
  std::vector<float> pm(parts * G), ps(parts * G), rs(G), m(G);
  for (int64_t b = 0; b < B; ++b) {
    mm_f32(L, xl.narrow(0, b * N, N), wt_in, P);
    column_softmax_stats(Lp, N, G, bin, parts, pm, ps, m, rs);
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      RowScratch sc(G);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        normalize_rows(Lp + r0 * G, r1 - r0, G, S, rs.data(), eps, nullptr, Lp + r0 * G, da, (b * N + r0) * G, sc);
      }
    });
    auto yb = y2.narrow(0, b * N, N);
    mm_f32(yb, operand(L, lp, Q), wt_out, P);
    float* yp = yb.data_ptr<float>();
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      std::vector<float> mult(d);
      std::vector<uint64_t> words(d / 4 + 2);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        bias_dropout_rows(yp + r0 * d, yp + r0 * d, r1 - r0, d, bout, dp, (b * N + r0) * d, mult, words);
      }
    });
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ea_backward(
    const at::Tensor& gy_, const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
    const at::Tensor& w_out, const at::Tensor& b_out, int64_t heads, double eps_, double p_attn, double p_proj,
    const at::Tensor& seed_t, int64_t use_bf16) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Dims D = check(x, w_in, b_in, w_out, b_out, heads);
  const int64_t B = D.B, N = D.N, d = D.d, G = D.G, S = D.S, H = G / S;
  const float eps = static_cast<float>(eps_);
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const Drop da = make_drop(p_attn, seed, 1), dp = make_drop(p_proj, seed, 2);
  const bool lp = use_bf16 != 0;
  auto gy = gy_.contiguous();
  auto gx = at::empty_like(x);
  auto x2 = x.view({B * N, d}), gy2 = gy.view({B * N, d}), gx2 = gx.view({B * N, d});
  auto xl = operand(x2, lp), wl_in = operand(w_in, lp), wl_out = operand(w_out, lp);  // the products' operands
  auto wt_in = wl_in.t();
  const float* bin = b_in.data_ptr<float>();
  const int64_t nthreads = at::get_num_threads();
  const auto opt = x.options();

  if (B >= nthreads) {
    const int64_t spc = std::max<int64_t>(1, std::min<int64_t>(B, kChunkRows / std::max<int64_t>(N, 1)));
    const int64_t nchunks = (B + spc - 1) / spc;
    // per-thread scratch and gradient accumulators, allocated on the calling thread
    auto acc_win = at::zeros({nthreads, G, d}, opt), acc_bin = at::zeros({nthreads, G}, opt);
    auto acc_wout = at::zeros({nthreads, d, G}, opt), acc_bout = at::zeros({nthreads, d}, opt);
    auto A_all = at::empty({nthreads, spc * N, G}, opt), G_all = at::empty({nthreads, spc * N, G}, opt);
    auto D_all = da.on && !lp ? at::empty({nthreads, spc * N, G}, opt) : A_all;  // bf16: the dropped map is in Q
    auto O_all = at::empty({nthreads, dp.on ? spc * N : 0, d}, opt);
    auto P_all = lowp_scratch(lp, nthreads, std::max(spc * N * std::max(G, d), G * d));
    auto Q_all = lowp_scratch(lp, nthreads, spc * N * G), R_all = lowp_scratch(lp, nthreads, spc * N * d);
    at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
      const int tid = at::get_thread_num();
      auto gwin = acc_win[tid], gbin = acc_bin[tid], gwout = acc_wout[tid], gbout = acc_bout[tid];
      auto A = A_all[tid], Gd = G_all[tid], Dd = D_all[tid], O = O_all[tid];
      auto P = P_all[tid], Q = Q_all[tid], R = R_all[tid];
      std::vector<float> m(G), s(G), rs(G), csu(G), mult(d);
      std::vector<float> Z(spc * N * H);
      RowScratch sc(G);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t b0 = c * spc, nb = std::min(spc, B - b0), rows = nb * N;
        auto Ac = A.narrow(0, 0, rows), Gc = Gd.narrow(0, 0, rows), Dc = Dd.narrow(0, 0, rows);
        auto xc = xl.narrow(0, b0 * N, rows);
        auto Ap = lp ? as_matrix(P, rows, G) : Ac;  // as in the forward pass
        at::mm_out(Ap, xc, wt_in);
        for (int64_t i = 0; i < nb; ++i) {
          float* p = A.data_ptr<float>() + i * N * G;
          std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
          std::fill(s.begin(), s.end(), 0.f);
          col_max(p, N, G, bin, m.data(), lp ? P.data_ptr<bf16>() + i * N * G : nullptr);
          exp_sum(p, N, G, m.data(), s.data(), lp);
          for (int64_t g = 0; g < G; ++g) rs[g] = 1.f / s[g];
          // A stays in fp32 (the softmax backward needs it); the dropped map goes to Dd, or as bf16 to Q
          float* dp32 = lp ? nullptr : Dd.data_ptr<float>() + i * N * G;
          normalize_rows(p, N, G, S, rs.data(), eps, Z.data() + i * N * H, dp32, da, (b0 + i) * N * G, sc,
                         lp ? Q.data_ptr<bf16>() + i * N * G : nullptr, lp);
        }
        at::Tensor Oc = gy2.narrow(0, b0 * N, rows);
        if (dp.on) {
          auto Ow = O.narrow(0, 0, rows);
          dropout_rows(Ow.data_ptr<float>(), Oc.data_ptr<float>(), rows, d, dp, b0 * N * d, mult, sc.words);
          Oc = Ow;
        }
        auto Ol = operand(Oc, lp, R);
        addmm_f32(gwout, Ol.t(), lp ? as_matrix(Q, rows, G) : Dc, P);
        gbout.add_(Oc.sum(0));
        mm_f32(Gc, Ol, wl_out, P);
        for (int64_t i = 0; i < nb; ++i) {
          float* gp = Gd.data_ptr<float>() + i * N * G;
          const float* ap = A.data_ptr<float>() + i * N * G;
          std::fill(csu.begin(), csu.end(), 0.f);
          backward_u(gp, ap, N, G, S, da, (b0 + i) * N * G, csu.data(), sc);
          backward_gl(gp, ap, Z.data() + i * N * H, N, G, S, csu.data(), gbin.data_ptr<float>(), sc,
                      lp ? Q.data_ptr<bf16>() + i * N * G : nullptr);  // bf16: gL also as the next operand
        }
        auto gxc = gx2.narrow(0, b0 * N, rows);
        auto Gl = lp ? as_matrix(Q, rows, G) : Gc;
        mm_f32(gxc, Gl, wl_in, P);
        addmm_f32(gwin, Gl.t(), xc, P);
      }
    });
    return {gx, acc_win.sum(0), acc_bin.sum(0), acc_wout.sum(0), acc_bout.sum(0)};
  }

  // few samples: one at a time, matrix products multi-threaded, row blocks in parallel
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(nthreads, N));
  auto gwin = at::zeros({G, d}, opt), gbin = at::zeros({G}, opt);
  auto gwout = at::zeros({d, G}, opt), gbout = at::zeros({d}, opt);
  auto A = at::empty({N, G}, opt), Gd = at::empty({N, G}, opt);
  auto Dd = da.on ? at::empty({N, G}, opt) : A;
  auto O = at::empty({N, d}, opt);
  auto P = lowp_scratch(lp, 1, std::max(N * std::max(G, d), G * d))[0];
  auto Q = lowp_scratch(lp, 1, N * G)[0], R = lowp_scratch(lp, 1, N * d)[0];
  std::vector<float> Z(N * H), pm(parts * G), ps(parts * G), m(G), rs(G), csu(G);
  float* Ap = A.data_ptr<float>();
  float* Gp = Gd.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    auto xb = xl.narrow(0, b * N, N);
    mm_f32(A, xb, wt_in, P);
    column_softmax_stats(Ap, N, G, bin, parts, pm, ps, m, rs);
    float* Dp = Dd.data_ptr<float>();
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      RowScratch sc(G);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        normalize_rows(Ap + r0 * G, r1 - r0, G, S, rs.data(), eps, Z.data() + r0 * H, Dp + r0 * G, da,
                       (b * N + r0) * G, sc);
      }
    });
    at::Tensor Ob = gy2.narrow(0, b * N, N);
    if (dp.on) {
      float* op = O.data_ptr<float>();
      const float* gp = Ob.data_ptr<float>();
      at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
        std::vector<float> mult(d);
        std::vector<uint64_t> words(d / 4 + 2);
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
          dropout_rows(op + r0 * d, gp + r0 * d, r1 - r0, d, dp, (b * N + r0) * d, mult, words);
        }
      });
      Ob = O;
    }
    auto Ol = operand(Ob, lp, R);
    addmm_f32(gwout, Ol.t(), operand(Dd, lp, Q), P);
    gbout.add_(Ob.sum(0));
    mm_f32(Gd, Ol, wl_out, P);
    std::fill(ps.begin(), ps.end(), 0.f);
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      RowScratch sc(G);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        backward_u(Gp + r0 * G, Ap + r0 * G, r1 - r0, G, S, da, (b * N + r0) * G, ps.data() + q * G, sc);
      }
    });
    for (int64_t g = 0; g < G; ++g) {
      float v = 0.f;
      for (int64_t q = 0; q < parts; ++q) v += ps[q * G + g];
      csu[g] = v;
    }
    std::fill(pm.begin(), pm.end(), 0.f);  // reused: partial column sums of gL
    at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
      RowScratch sc(G);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
        backward_gl(Gp + r0 * G, Ap + r0 * G, Z.data() + r0 * H, r1 - r0, G, S, csu.data(), pm.data() + q * G, sc);
      }
    });
    float* gb = gbin.data_ptr<float>();
    for (int64_t q = 0; q < parts; ++q)
      for (int64_t g = 0; g < G; ++g) gb[g] += pm[q * G + g];
    auto gxb = gx2.narrow(0, b * N, N);
    auto Gl = operand(Gd, lp, Q);
    mm_f32(gxb, Gl, wl_in, P);
    addmm_f32(gwin, Gl.t(), xb, P);
  }
  return {gx, gwin, gbin, gwout, gbout};
}

}  // namespace eanet_fused
