"""Building blocks: token mixers, the pre-norm block, tokenizers."""

from eanet.layers.attention import ExternalAttention, SelfAttention, double_normalize
from eanet.layers.blocks import Block, DropPath, Mlp, make_mixer
from eanet.layers.embed import ConvStem, InputNormalize, PatchEmbed

__all__ = [
    "Block", "ConvStem", "DropPath", "ExternalAttention", "InputNormalize", "Mlp", "PatchEmbed",
    "SelfAttention", "double_normalize", "make_mixer",
]
