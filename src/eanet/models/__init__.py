"""Model families and the registry of their named variants.

Variants (configs as data; every key is an :class:`~eanet.models.eanet.EANet` argument):

- ``eanet_keras``: the Keras example's EANet exactly (361,380 trainable parameters).
- ``vit_keras``: the same network with ``MultiHeadAttention(num_heads=4, key_dim=64)`` (623,268).
- ``eanet_s64``: the seed's EANet with the official EANet memory size S = 64.
"""

from eanet.models.eanet import CIFAR100_MEAN, CIFAR100_STD, EANet
from eanet.models.registry import ModelSpec, create_model, list_models, model_spec, register_model

__all__ = [
    "CIFAR100_MEAN", "CIFAR100_STD", "EANet", "ModelSpec", "create_model", "list_models", "model_spec",
    "register_model",
]

# The seed: 2x2 patches, d=64, 8 blocks, external attention with 16 heads of 16 (4 x dim_coefficient)
# and S = dim // dim_coefficient = 16, MLP 64, dropout 0.2 everywhere, tanh GELU, no final norm.
SEED = dict(
    num_classes=100, img_size=32, stem="patch", patch_size=2, embed_dim=64, depth=8, mlp_dim=64,
    attn_drop=0.2, proj_drop=0.2, mlp_drop=0.2, final_norm=False, act_approximate="tanh",
)

register_model(
    "eanet_keras", EANet, attention="external", num_heads=16, expansion=4, memory_size=16, **SEED,
    description="the Keras example's EANet: 2x2 patches, 8 blocks of d=64, 16 heads, S=16",
)
register_model(
    "vit_keras", EANet, **{**SEED, "proj_drop": 0.0}, attention="self", num_heads=4, head_dim=64,
    description="the Keras example's ViT baseline: MultiHeadAttention(num_heads=4, key_dim=64)",
)
register_model(
    "eanet_s64", EANet, attention="external", num_heads=16, expansion=4, memory_size=64, **SEED,
    description="the Keras example's EANet with the official EANet memory size S=64",
)
