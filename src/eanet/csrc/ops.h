// The operators of eanet's fused CPU kernels (registered in ops.cpp as the torch library eanet_fused). All take and
// return fp32, contiguous CPU tensors; `bf16` = 1 computes their matrix products from bf16 operands (common.h). Every
// random number comes from a counter-based stream keyed by `seed_t`, so a backward pass regenerates the forward
// pass's dropout masks instead of storing them.
#pragma once

#include "common.h"

namespace eanet_fused {

// external_attention.cpp: y = drop(W_out . drop(DoubleNorm(W_in x + b_in)) + b_out), `heads` groups of S = G / heads
at::Tensor ea_forward(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_out,
                      const at::Tensor& b_out, int64_t heads, double eps_, double p_attn, double p_proj,
                      const at::Tensor& seed_t, int64_t use_bf16);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ea_backward(
    const at::Tensor& gy_, const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
    const at::Tensor& w_out, const at::Tensor& b_out, int64_t heads, double eps_, double p_attn, double p_proj,
    const at::Tensor& seed_t, int64_t use_bf16);

// dropout.cpp: y = x * mask / (1 - p), the mask of stream `stream` of the random seed `seed_t`
at::Tensor dropout_forward(const at::Tensor& x_, double p, const at::Tensor& seed_t, int64_t stream);

// mlp.cpp: y = x + drop2(fc2(drop1(gelu(fc1(LayerNorm(x))))))
at::Tensor mlp_forward(const at::Tensor& x_, const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& w1,
                       const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double ln_eps,
                       int64_t tanh_gelu, double p1, double p2, const at::Tensor& seed_t, int64_t use_bf16);
std::vector<at::Tensor> mlp_backward(const at::Tensor& gy_, const at::Tensor& x_, const at::Tensor& ln_w,
                                     const at::Tensor& ln_b, const at::Tensor& w1, const at::Tensor& b1,
                                     const at::Tensor& w2, const at::Tensor& b2, double ln_eps, int64_t tanh_gelu,
                                     double p1, double p2, const at::Tensor& seed_t, int64_t use_bf16);

// self_attention.cpp: softmax(scale q k^T) -> dropout -> @ v per (sample, head), and each row's log-sum-exp
std::tuple<at::Tensor, at::Tensor> sa_forward(const at::Tensor& qkv, int64_t heads, double scale_, double p,
                                              const at::Tensor& seed_t, int64_t use_bf16);
at::Tensor sa_backward(const at::Tensor& gout_, const at::Tensor& qkv, const at::Tensor& out_,
                       const at::Tensor& lse_, int64_t heads, double scale_, double p, const at::Tensor& seed_t,
                       int64_t use_bf16);

}  // namespace eanet_fused
