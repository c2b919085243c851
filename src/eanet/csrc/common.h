// Shared pieces of eanet's fused CPU kernels: the counter-based dropout masks (splitmix64 streams), vectorised
// row helpers, the matrix products in either precision, and the row-block bookkeeping the external-attention
// kernel uses.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace eanet_fused {

using fVec = at::vec::Vectorized<float>;
using bf16 = at::BFloat16;
using bVec = at::vec::Vectorized<bf16>;
constexpr int64_t kV = fVec::size();
constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;

// splitmix64's output function: the j-th draw of a stream is fmix(key + j * kGamma).
inline uint64_t fmix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// A dropout stream: element i is kept when the 16 bits (i % 4) of draw i / 4 fall under thr.
struct Drop {
  bool on = false;
  uint64_t key = 0;
  uint32_t thr = 65536;
  float scale = 1.f;
};

inline Drop make_drop(double p, uint64_t seed, uint64_t stream) {
  Drop d;
  if (p > 0.0) {
    d.on = true;
    d.key = fmix(seed + stream * kGamma);
    d.thr = static_cast<uint32_t>(std::llround((1.0 - p) * 65536.0));
    d.scale = static_cast<float>(1.0 / (1.0 - p));
  }
  return d;
}

// out[e] = scale or 0 for elements [i0, i0 + n) of the stream. The draws are made first (one per four elements,
// a loop the compiler vectorises), then read back as 16-bit chunks.
inline void drop_mult(const Drop& d, int64_t i0, int64_t n, float* out, std::vector<uint64_t>& words) {
  const int64_t w0 = i0 >> 2, nw = ((i0 + n + 3) >> 2) - w0;
  if (static_cast<int64_t>(words.size()) < nw) words.resize(nw);
  uint64_t* wp = words.data();
  const uint64_t key = d.key;
  for (int64_t w = 0; w < nw; ++w) wp[w] = fmix(key + static_cast<uint64_t>(w0 + w) * kGamma);
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(wp) + (i0 & 3);
  const uint32_t thr = d.thr;
  const float scale = d.scale;
  for (int64_t e = 0; e < n; ++e) out[e] = static_cast<uint32_t>(bits[e]) < thr ? scale : 0.f;
}

// ---- Matrix products in the kernels' two precisions ----
// fp32: at::mm straight into fp32 outputs. bf16 (`precision: bf16`): both operands rounded to bf16 (round to
// nearest even), the product computed by oneDNN with bf16 dot products and fp32 accumulation, rounded to bf16 on
// the way out and widened into the same fp32 buffers the fp32 path uses. Everything between the products (softmax,
// double normalisation, LayerNorm, GELU, dropout) and every gradient accumulator stays fp32, as do the weights the
// optimizer updates: only the products' operands and results pass through bf16.

inline void to_bf16(const float* s, bf16* d, int64_t n) {
  int64_t i = 0;
  for (; i + 2 * kV <= n; i += 2 * kV)
    at::vec::convert_float_bfloat16(fVec::loadu(s + i), fVec::loadu(s + i + kV)).store(d + i);
  for (; i < n; ++i) d[i] = static_cast<bf16>(s[i]);
}

inline void to_f32(const bf16* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 2 * kV <= n; i += 2 * kV) {
    auto ab = at::vec::convert_bfloat16_float(bVec::loadu(s + i));
    std::get<0>(ab).store(d + i);
    std::get<1>(ab).store(d + i + kV);
  }
  for (; i < n; ++i) d[i] = static_cast<float>(s[i]);
}

// acc[i] += s[i]
inline void add_f32(const bf16* s, float* acc, int64_t n) {
  int64_t i = 0;
  for (; i + 2 * kV <= n; i += 2 * kV) {
    auto ab = at::vec::convert_bfloat16_float(bVec::loadu(s + i));
    (fVec::loadu(acc + i) + std::get<0>(ab)).store(acc + i);
    (fVec::loadu(acc + i + kV) + std::get<1>(ab)).store(acc + i + kV);
  }
  for (; i < n; ++i) acc[i] += static_cast<float>(s[i]);
}

// The first `rows x cols` elements of a flat scratch tensor as a contiguous matrix.
inline at::Tensor as_matrix(const at::Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
}

// A contiguous fp32 matrix as a product operand: itself (fp32), or its bf16 copy in the scratch `buf`.
inline at::Tensor operand(const at::Tensor& t, bool lowp, const at::Tensor& buf) {
  if (!lowp) return t;
  auto o = as_matrix(buf, t.size(0), t.size(1));
  to_bf16(t.data_ptr<float>(), o.data_ptr<bf16>(), t.numel());
  return o;
}

// A whole tensor as a product operand: itself, or a bf16 copy (weights and a kernel's inputs, converted once per call).
inline at::Tensor operand(const at::Tensor& t, bool lowp) { return lowp ? t.to(at::kBFloat16).contiguous() : t; }

// out (fp32, contiguous) = a @ b in the operands' precision; `prod` is bf16 scratch for a bf16 product.
inline void mm_f32(at::Tensor out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& prod) {
  if (a.scalar_type() == at::kFloat) {
    at::mm_out(out, a, b);
    return;
  }
  auto p = as_matrix(prod, out.size(0), out.size(1));
  at::mm_out(p, a, b);
  to_f32(p.data_ptr<bf16>(), out.data_ptr<float>(), out.numel());
}

// acc (fp32, contiguous) += a @ b in the operands' precision.
inline void addmm_f32(at::Tensor acc, const at::Tensor& a, const at::Tensor& b, const at::Tensor& prod) {
  if (a.scalar_type() == at::kFloat) {
    acc.addmm_(a, b);
    return;
  }
  auto p = as_matrix(prod, acc.size(0), acc.size(1));
  at::mm_out(p, a, b);
  add_f32(p.data_ptr<bf16>(), acc.data_ptr<float>(), acc.numel());
}

// Flat bf16 scratch of `n` values per thread (none in fp32).
inline at::Tensor lowp_scratch(bool lowp, int64_t threads, int64_t n) {
  return at::empty({threads, lowp ? n : 0}, at::TensorOptions().dtype(at::kBFloat16));
}

// sum_i x[i] (* y[i]) with vector accumulators: no long chain of dependent scalar additions.
inline float dot_or_sum(const float* x, const float* y, int64_t n) {
  int64_t i = 0;
  float acc = 0.f;
  if (n >= kV) {
    fVec v(0.f);
    if (y) {
      for (; i + kV <= n; i += kV) v = at::vec::fmadd(fVec::loadu(x + i), fVec::loadu(y + i), v);
    } else {
      for (; i + kV <= n; i += kV) v = v + fVec::loadu(x + i);
    }
    acc = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
  }
  for (; i < n; ++i) acc += y ? x[i] * y[i] : x[i];
  return acc;
}

// sum_i (x[i] - c)^2
inline float sum_sq_diff(const float* x, float c, int64_t n) {
  int64_t i = 0;
  float acc = 0.f;
  if (n >= kV) {
    fVec v(0.f);
    const fVec cv(c);
    for (; i + kV <= n; i += kV) {
      fVec t = fVec::loadu(x + i) - cv;
      v = at::vec::fmadd(t, t, v);
    }
    acc = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
  }
  for (; i < n; ++i) acc += (x[i] - c) * (x[i] - c);
  return acc;
}

// X[r, g] += bias[g] in place and m[g] = max(m[g], X[r, g]) over rows. With `src` (a bf16 product), X is first
// written from it: X[r, g] = src[r, g] + bias[g], one pass instead of a widening pass and this one.
inline void col_max(float* X, int64_t rows, int64_t G, const float* bias, float* m, const bf16* src = nullptr) {
  for (int64_t r = 0; r < rows; ++r) {
    float* x = X + r * G;
    if (src) to_f32(src + r * G, x, G);
    int64_t g = 0;
    for (; g + kV <= G; g += kV) {
      fVec v = fVec::loadu(x + g) + fVec::loadu(bias + g);
      v.store(x + g);
      at::vec::maximum(fVec::loadu(m + g), v).store(m + g);
    }
    for (; g < G; ++g) {
      x[g] += bias[g];
      m[g] = std::max(m[g], x[g]);
    }
  }
}

// X[r, :] = (src[r, :] + bias) * dropout multipliers (rows of width W starting at element elem0; X may be src).
inline void bias_dropout_rows(float* X, const float* src, int64_t rows, int64_t W, const float* bias, const Drop& drop,
                              int64_t elem0, std::vector<float>& mult, std::vector<uint64_t>& words) {
  if (static_cast<int64_t>(mult.size()) < W) mult.resize(W);
  for (int64_t r = 0; r < rows; ++r) {
    if (drop.on) {
      drop_mult(drop, elem0 + r * W, W, mult.data(), words);
      for (int64_t g = 0; g < W; ++g) X[r * W + g] = (src[r * W + g] + bias[g]) * mult[g];
    } else {
      for (int64_t g = 0; g < W; ++g) X[r * W + g] = src[r * W + g] + bias[g];
    }
  }
}

// X <- exp(X - m) in place; s[g] += column sums. `fast`: ATen's exp_u20 (within 20 ulp, ~2e-6 relative; used by the
// bf16 mode, whose products round to 2^-9) instead of the 1-ulp exp.
inline void exp_sum(float* X, int64_t rows, int64_t G, const float* m, float* s, bool fast = false) {
  for (int64_t r = 0; r < rows; ++r) {
    float* x = X + r * G;
    int64_t g = 0;
    for (; g + kV <= G; g += kV) {
      fVec t = fVec::loadu(x + g) - fVec::loadu(m + g);
      fVec e = fast ? t.exp_u20() : t.exp();
      e.store(x + g);
      (fVec::loadu(s + g) + e).store(s + g);
    }
    for (; g < G; ++g) {
      x[g] = std::exp(x[g] - m[g]);
      s[g] += x[g];
    }
  }
}

// Per row: P = E * rs (the softmax over tokens), Z_h = eps + sum_j P[h*S + j], A = P / Z_h written over E;
// Z stored per (row, head) if Z != nullptr; D = A * dropout written to D (fp32, may be E itself) and/or DL (bf16, the
// next product's operand) where given. One head at a time, so each row is read from memory once. `fast` multiplies
// by 1 / Z_h instead of dividing (the bf16 mode).
struct RowScratch {
  std::vector<float> mult, zrow, qrow;
  std::vector<uint64_t> words;
  explicit RowScratch(int64_t G) : mult(G), zrow(G), qrow(G), words(G / 4 + 2) {}
};

inline void normalize_rows(float* E, int64_t rows, int64_t G, int64_t S, const float* rs, float eps, float* Z, float* D,
                           const Drop& drop, int64_t elem0, RowScratch& sc, bf16* DL = nullptr, bool fast = false) {
  const int64_t H = G / S;
  float* mult = sc.mult.data();
  float* drow = sc.qrow.data();  // the dropped row, when it goes to DL only
  for (int64_t r = 0; r < rows; ++r) {
    float* a = E + r * G;
    float* o = D ? D + r * G : (DL ? drow : nullptr);
    const bool dropping = o && drop.on;
    if (dropping) drop_mult(drop, elem0 + r * G, G, mult, sc.words);
    for (int64_t h = 0; h < H; ++h) {
      float* ah = a + h * S;
      const float* rh = rs + h * S;
      int64_t j = 0;
      float z = 0.f;
      if (S >= kV) {
        fVec acc(0.f);
        for (; j + kV <= S; j += kV) {
          fVec p = fVec::loadu(ah + j) * fVec::loadu(rh + j);
          p.store(ah + j);
          acc = acc + p;
        }
        z = at::vec::vec_reduce_all<float>([](fVec& u, fVec& v) { return u + v; }, acc);
      }
      for (; j < S; ++j) {
        ah[j] *= rh[j];
        z += ah[j];
      }
      z = eps + z;
      if (Z) Z[r * H + h] = z;
      const float inv = 1.f / z;
      const fVec zv(z), iv(inv);
      float* oh = o ? o + h * S : nullptr;
      const float* mh = mult + h * S;
      for (j = 0; j + kV <= S; j += kV) {
        fVec v = fast ? fVec::loadu(ah + j) * iv : fVec::loadu(ah + j) / zv;
        v.store(ah + j);
        if (oh) (dropping ? v * fVec::loadu(mh + j) : v).store(oh + j);
      }
      for (; j < S; ++j) {
        ah[j] = fast ? ah[j] * inv : ah[j] / z;
        if (oh) oh[j] = dropping ? ah[j] * mh[j] : ah[j];
      }
    }
    if (DL) to_bf16(o, DL + r * G, G);
  }
}

// Backward, first half. In: gD (gradient of the dropped attention), A. Out over gD: u = (gA - q_h) * A with
// gA = gD * dropout and q_h = sum_j gA[h*S+j] A[h*S+j]; csu[g] += column sums of u.
inline void backward_u(float* gD, const float* A, int64_t rows, int64_t G, int64_t S, const Drop& drop, int64_t elem0,
                       float* csu, RowScratch& sc) {
  const int64_t H = G / S;
  float* mult = sc.mult.data();
  float* qrow = sc.qrow.data();
  for (int64_t r = 0; r < rows; ++r) {
    float* gd = gD + r * G;
    const float* a = A + r * G;
    int64_t g = 0;
    if (drop.on) {
      drop_mult(drop, elem0 + r * G, G, mult, sc.words);
      for (; g + kV <= G; g += kV) (fVec::loadu(gd + g) * fVec::loadu(mult + g)).store(gd + g);
      for (; g < G; ++g) gd[g] *= mult[g];
    }
    for (int64_t h = 0; h < H; ++h) {
      const float q = dot_or_sum(gd + h * S, a + h * S, S);
      for (int64_t j = 0; j < S; ++j) qrow[h * S + j] = q;
    }
    for (g = 0; g + kV <= G; g += kV) {
      fVec u = (fVec::loadu(gd + g) - fVec::loadu(qrow + g)) * fVec::loadu(a + g);
      u.store(gd + g);
      (fVec::loadu(csu + g) + u).store(csu + g);
    }
    for (; g < G; ++g) {
      gd[g] = (gd[g] - qrow[g]) * a[g];
      csu[g] += gd[g];
    }
  }
}

// Backward, second half: gL = u - (A * Z_h) * csu over U; cgl[g] += column sums of gL; gL also as bf16 to GL if given.
inline void backward_gl(float* U, const float* A, const float* Z, int64_t rows, int64_t G, int64_t S, const float* csu,
                        float* cgl, RowScratch& sc, bf16* GL = nullptr) {
  const int64_t H = G / S;
  float* zrow = sc.zrow.data();
  for (int64_t r = 0; r < rows; ++r) {
    float* u = U + r * G;
    const float* a = A + r * G;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < S; ++j) zrow[h * S + j] = Z[r * H + h];
    int64_t g = 0;
    for (; g + kV <= G; g += kV) {
      fVec gl = fVec::loadu(u + g) - fVec::loadu(a + g) * fVec::loadu(zrow + g) * fVec::loadu(csu + g);
      gl.store(u + g);
      (fVec::loadu(cgl + g) + gl).store(cgl + g);
    }
    for (; g < G; ++g) {
      u[g] = u[g] - a[g] * zrow[g] * csu[g];
      cgl[g] += u[g];
    }
    if (GL) to_bf16(u, GL + r * G, G);
  }
}

// X[r, :] *= dropout multipliers (rows of width W starting at element elem0).
inline void dropout_rows(float* X, const float* src, int64_t rows, int64_t W, const Drop& drop, int64_t elem0,
                         std::vector<float>& mult, std::vector<uint64_t>& words) {
  if (static_cast<int64_t>(mult.size()) < W) mult.resize(W);
  for (int64_t r = 0; r < rows; ++r) {
    drop_mult(drop, elem0 + r * W, W, mult.data(), words);
    for (int64_t g = 0; g < W; ++g) X[r * W + g] = src[r * W + g] * mult[g];
  }
}

constexpr int64_t kChunkRows = 512;

struct Dims {
  int64_t B, N, d, G, S;
};

inline Dims check(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_out,
           const at::Tensor& b_out, int64_t heads) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float (B, N, d)");
  const int64_t d = x.size(2), G = w_in.size(0);
  TORCH_CHECK(w_in.sizes() == at::IntArrayRef({G, d}) && w_out.sizes() == at::IntArrayRef({d, G}), "weight shapes");
  TORCH_CHECK(b_in.numel() == G && b_out.numel() == d, "bias shapes");
  TORCH_CHECK(heads > 0 && G % heads == 0, "G must be divisible by heads");
  return {x.size(0), x.size(1), d, G, G / heads};
}

// Row ranges [part * rows / parts, (part + 1) * rows / parts).
inline int64_t part_begin(int64_t part, int64_t parts, int64_t rows) { return part * rows / parts; }

// The softmax over the N rows (tokens) of one sample's logits L (N x G), in `parts` row blocks in
// parallel: col_max adds the bias and finds each column's max m, exp_sum writes exp(L - m) in place,
// and rs gets 1 / (column sum). pm and ps are per-block scratch of parts * G values.
inline void column_softmax_stats(float* L, int64_t N, int64_t G, const float* bin, int64_t parts,
                                 std::vector<float>& pm, std::vector<float>& ps, std::vector<float>& m,
                                 std::vector<float>& rs) {
  std::fill(pm.begin(), pm.end(), -std::numeric_limits<float>::infinity());
  std::fill(ps.begin(), ps.end(), 0.f);
  at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
      col_max(L + r0 * G, r1 - r0, G, bin, pm.data() + q * G);
    }
  });
  for (int64_t g = 0; g < G; ++g) {
    float v = -std::numeric_limits<float>::infinity();
    for (int64_t q = 0; q < parts; ++q) v = std::max(v, pm[q * G + g]);
    m[g] = v;
  }
  at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r0 = part_begin(q, parts, N), r1 = part_begin(q + 1, parts, N);
      exp_sum(L + r0 * G, r1 - r0, G, m.data(), ps.data() + q * G);
    }
  });
  for (int64_t g = 0; g < G; ++g) {
    float v = 0.f;
    for (int64_t q = 0; q < parts; ++q) v += ps[q * G + g];
    rs[g] = 1.f / v;
  }
}

}  // namespace eanet_fused
