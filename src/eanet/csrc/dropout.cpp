// Inverted dropout with the counter-based masks the fused kernels regenerate in their backward passes.
#include "ops.h"

namespace eanet_fused {

// Plain inverted dropout with the same counter-based masks: y = x * mask * scale, recomputable from the per-call seed.
at::Tensor dropout_forward(const at::Tensor& x_, double p, const at::Tensor& seed_t, int64_t stream) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto x = x_.contiguous();
  TORCH_CHECK(x.scalar_type() == at::kFloat, "dropout: float tensors only");
  const Drop dr = make_drop(p, static_cast<uint64_t>(seed_t.item<int64_t>()), static_cast<uint64_t>(stream));
  auto y = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t n = x.numel();
  constexpr int64_t kBlock = 4096;
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 16, [&](int64_t k0, int64_t k1) {
    std::vector<float> mult(kBlock);
    std::vector<uint64_t> words(kBlock / 4 + 2);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t i0 = k * kBlock, len = std::min(kBlock, n - i0);
      if (dr.on) {
        drop_mult(dr, i0, len, mult.data(), words);
        for (int64_t e = 0; e < len; ++e) yp[i0 + e] = xp[i0 + e] * mult[e];
      } else {
        std::copy(xp + i0, xp + i0 + len, yp + i0);
      }
    }
  });
  return y;
}

}  // namespace eanet_fused
