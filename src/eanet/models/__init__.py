"""Model families and the registry of their named variants.

Variants (configs as data; every key is an :class:`~eanet.models.eanet.EANet` argument):

- ``eanet_keras``: the Keras example's EANet exactly (361,380 trainable parameters).
- ``vit_keras``: the same network with ``MultiHeadAttention(num_heads=4, key_dim=64)`` (623,268).
- ``eanet_s64``: the Keras example's EANet with the official EANet memory size S = 64.
- ``eanet_conv_small``: the 10-minute budget model (recipe ``cifar100-fast``): a 3-convolution stem
  making 8x8 overlapping tokens, 4 blocks of d=128, 8 heads, S=32 (669,188 parameters).
- ``eanet_conv_medium``: the 30-minute budget model (recipe ``cifar100-30min``): the same with a
  6-convolution stem (1,001,604 parameters).
- ``vit_conv_small``, ``vit_conv_medium``: the two budget models with multi-head self-attention in
  place of external attention, for comparisons under identical settings.
"""

from eanet.models.eanet import CIFAR100_MEAN, CIFAR100_STD, EANet
from eanet.models.registry import ModelSpec, create_model, list_models, model_spec, register_model

__all__ = [
    "CIFAR100_MEAN", "CIFAR100_STD", "EANet", "ModelSpec", "create_model", "list_models", "model_spec",
    "register_model",
]

# The Keras example: 2x2 patches, d=64, 8 blocks, external attention with 16 heads of 16
# (4 x dim_coefficient) and S = dim // dim_coefficient = 16, MLP 64, dropout 0.2 everywhere, tanh GELU,
# no final norm.
KERAS_EXAMPLE = dict(
    num_classes=100, img_size=32, stem="patch", patch_size=2, embed_dim=64, depth=8, mlp_dim=64,
    attn_drop=0.2, proj_drop=0.2, mlp_drop=0.2, final_norm=False, act_approximate="tanh",
)

register_model(
    "eanet_keras", EANet, attention="external", num_heads=16, expansion=4, memory_size=16, **KERAS_EXAMPLE,
    description="the Keras example's EANet: 2x2 patches, 8 blocks of d=64, 16 heads, S=16",
)
register_model(
    "vit_keras", EANet, **{**KERAS_EXAMPLE, "proj_drop": 0.0}, attention="self", num_heads=4, head_dim=64,
    description="the Keras example's ViT baseline: MultiHeadAttention(num_heads=4, key_dim=64)",
)
register_model(
    "eanet_s64", EANet, attention="external", num_heads=16, expansion=4, memory_size=64, **KERAS_EXAMPLE,
    description="the Keras example's EANet with the official EANet memory size S=64",
)

# The budget models: a convolutional stem turns 32x32 pixels into 8x8 = 64 overlapping tokens, then 4
# pre-norm blocks of width 128 (exact GELU, a final LayerNorm, no dropout). "small" has 3 convolutions
# (strides 1, 2, 2), "medium" 6 (strides 1, 2, 1, 2, 1, 1: one at 32x32, two at 16x16, three at 8x8).
CONV = dict(
    num_classes=100, img_size=32, stem="conv", embed_dim=128, depth=4, mlp_dim=256, attn_drop=0.0,
    proj_drop=0.0, mlp_drop=0.0, drop_path=0.0, final_norm=True, act_approximate="none",
)
CONV_SMALL = dict(stem_channels=[32, 64, 128], stem_strides=[1, 2, 2])
CONV_MEDIUM = dict(stem_channels=[32, 64, 64, 128, 128, 128], stem_strides=[1, 2, 1, 2, 1, 1])
EXTERNAL = dict(attention="external", num_heads=8, expansion=2, memory_size=32)
# the self-attention twins keep the external-attention arguments (unused by self-attention) so that a budget
# model with ``attention="self"`` set is recognised as its twin (registry.identify_variant)
SELF = {**EXTERNAL, "attention": "self"}

register_model(
    "eanet_conv_small", EANet, **CONV, **CONV_SMALL, **EXTERNAL,
    description="budget model (cifar100-fast): 3-conv stem, 8x8 tokens, 4 blocks of d=128, 8 heads, S=32",
)
register_model(
    "eanet_conv_medium", EANet, **CONV, **CONV_MEDIUM, **EXTERNAL,
    description="budget model (cifar100-30min): 6-conv stem, 8x8 tokens, 4 blocks of d=128, 8 heads, S=32",
)
register_model(
    "vit_conv_small", EANet, **CONV, **CONV_SMALL, **SELF,
    description="eanet_conv_small with 8-head self-attention in place of external attention",
)
register_model(
    "vit_conv_medium", EANet, **CONV, **CONV_MEDIUM, **SELF,
    description="eanet_conv_medium with 8-head self-attention in place of external attention",
)
