// The operators of the eanet_fused library and their CPU implementations.
#include "ops.h"

TORCH_LIBRARY(eanet_fused, m) {
  m.def("ea_forward(Tensor x, Tensor w_in, Tensor b_in, Tensor w_out, Tensor b_out, int heads, float eps, "
        "float p_attn, float p_proj, Tensor seed, int bf16) -> Tensor");
  m.def("ea_backward(Tensor gy, Tensor x, Tensor w_in, Tensor b_in, Tensor w_out, Tensor b_out, int heads, "
        "float eps, float p_attn, float p_proj, Tensor seed, int bf16) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("dropout(Tensor x, float p, Tensor seed, int stream) -> Tensor");
  m.def("mlp_forward(Tensor x, Tensor ln_w, Tensor ln_b, Tensor w1, Tensor b1, Tensor w2, Tensor b2, float ln_eps, "
        "int tanh_gelu, float p1, float p2, Tensor seed, int bf16) -> Tensor");
  m.def("mlp_backward(Tensor gy, Tensor x, Tensor ln_w, Tensor ln_b, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
        "float ln_eps, int tanh_gelu, float p1, float p2, Tensor seed, int bf16) -> Tensor[]");
  m.def("sa_forward(Tensor qkv, int heads, float scale, float p, Tensor seed, int bf16) -> (Tensor, Tensor)");
  m.def("sa_backward(Tensor gout, Tensor qkv, Tensor out, Tensor lse, int heads, float scale, float p, "
        "Tensor seed, int bf16) -> Tensor");
}

TORCH_LIBRARY_IMPL(eanet_fused, CPU, m) {
  m.impl("ea_forward", &eanet_fused::ea_forward);
  m.impl("ea_backward", &eanet_fused::ea_backward);
  m.impl("dropout", &eanet_fused::dropout_forward);
  m.impl("mlp_forward", &eanet_fused::mlp_forward);
  m.impl("mlp_backward", &eanet_fused::mlp_backward);
  m.impl("sa_forward", &eanet_fused::sa_forward);
  m.impl("sa_backward", &eanet_fused::sa_backward);
}
