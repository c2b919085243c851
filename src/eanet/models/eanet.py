"""EANet: a ViT-style classifier whose token mixer is external attention, and its ViT baseline.

Read top to bottom, the forward pass is the Keras example's ``get_model``:

    raw pixels (B, 3, 32, 32), 0-255
      -> InputNormalize          per-channel (x - mean) / std, stats stored with the weights
      -> PatchEmbed              2x2 patches -> N = 256 tokens of d = 64 channels
         (+ learned position embedding, N x d)
      -> depth x Block           pre-norm: x + mixer(LN(x)), x + MLP(LN(x))
      -> [LayerNorm]             not in the Keras example (``final_norm=False``)
      -> mean over the N tokens  GlobalAveragePooling1D
      -> Linear(d, classes)      logits (the Keras example's softmax is left to the loss / the caller)

``attention="external"`` gives EANet, ``attention="self"`` the ViT baseline "under the same
conditions". Every constructor argument is JSON data: it is what ``config.json`` holds, and
:func:`eanet.models.registry.create_model` builds the named variants from such dictionaries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from eanet.fileio import atomic_write_bytes
from eanet.layers import Block, ConvStem, InputNormalize, PatchEmbed, SelfAttention

__all__ = ["EANet", "CIFAR100_MEAN", "CIFAR100_STD"]

# Per-channel mean and standard deviation of the 50,000 CIFAR-100 training images (0-255 scale);
# the default input normalisation until a training run adapts it to its own training split.
CIFAR100_MEAN = (129.3042, 124.0700, 112.4341)
CIFAR100_STD = (68.1702, 65.3918, 70.4184)


class EANet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="eanet",
    tags=["image-classification", "external-attention", "eanet"],
    pipeline_tag="image-classification",
    license="apache-2.0",
    paper_url="https://arxiv.org/abs/2105.02358",
):
    """Patch (or conv) tokenizer, ``depth`` pre-norm blocks of external or self-attention, pooled head.

    Args (keyword only; the defaults are the Keras example's EANet, ``eanet_keras``):
        num_classes: classes of the linear head.
        img_size, in_chans: input resolution and channels.
        stem: ``"patch"`` (non-overlapping ``patch_size`` patches, the Keras example) or ``"conv"``
            (a :class:`~eanet.layers.ConvStem` with ``stem_channels``, ``stem_strides`` and the
            activation ``stem_act``, ``"gelu"`` or ``"relu"``).
        embed_dim: token width d.
        depth: number of blocks.
        attention: ``"external"`` (EANet) or ``"self"`` (ViT).
        num_heads: heads of the mixer (external: the Keras example's 4 x dim_coefficient = 16; self: 4).
        expansion: external attention's channel expansion (the Keras example's ``dim_coefficient``).
        memory_size: external attention's S (seed 16, official EANet 64).
        memory_bias: bias on the memories M_k and M_v.
        head_dim: self-attention's per-head width (seed: key_dim 64).
        mlp_dim: hidden width of the MLP.
        attn_drop, proj_drop, mlp_drop: the Keras example's dropouts (0.2 each; the Keras example's self-attention
            has no projection dropout).
        drop_path: stochastic depth rate of the last block (linear from 0 over the blocks).
        pos_embed: learned position embedding (the Keras example's ``Embedding(N, d)``).
        final_norm: LayerNorm before pooling (absent in the Keras example).
        head_drop: dropout before the head.
        norm_eps: LayerNorm epsilon (seed 1e-5).
        act_approximate: GELU approximation, ``"tanh"`` (Keras' default, the Keras example) or ``"none"``.
        input_mean, input_std: per-channel input normalisation on the 0-255 scale.
        class_names: optional list of class names, saved in ``config.json`` for prediction.
    """

    # what a constructor argument may be (eanet.models.registry.check_model_args); sizes far beyond any
    # sensible model are refused before anything is allocated
    ARG_RANGES = {
        "num_classes": (1, 1_000_000), "img_size": (1, 4096), "in_chans": (1, 64), "patch_size": (1, 1024),
        "stem_channels": (1, 8192), "stem_strides": (1, 16), "embed_dim": (1, 8192), "depth": (1, 256),
        "num_heads": (1, 1024), "expansion": (1, 64), "memory_size": (1, 65536), "head_dim": (1, 4096),
        "mlp_dim": (1, 65536), "attn_drop": (0.0, 0.99), "proj_drop": (0.0, 0.99), "mlp_drop": (0.0, 0.99),
        "drop_path": (0.0, 0.99), "head_drop": (0.0, 0.99), "norm_eps": (1e-12, 1.0), "input_std": (1e-6, 1e6),
        "input_mean": (-1e6, 1e6),
    }
    ARG_CHOICES = {"stem": ("patch", "conv"), "stem_act": ("gelu", "relu"), "attention": ("external", "self"),
                   "act_approximate": ("tanh", "none")}

    def __init__(
        self,
        *,
        num_classes: int = 100,
        img_size: int = 32,
        in_chans: int = 3,
        stem: str = "patch",
        patch_size: int = 2,
        stem_channels: Sequence[int] = (32, 64, 128),
        stem_strides: Sequence[int] = (1, 2, 2),
        stem_act: str = "gelu",
        embed_dim: int = 64,
        depth: int = 8,
        attention: str = "external",
        num_heads: int = 16,
        expansion: int = 4,
        memory_size: int = 16,
        memory_bias: bool = True,
        head_dim: int | None = None,
        mlp_dim: int = 64,
        attn_drop: float = 0.2,
        proj_drop: float = 0.2,
        mlp_drop: float = 0.2,
        drop_path: float = 0.0,
        pos_embed: bool = True,
        final_norm: bool = False,
        head_drop: float = 0.0,
        norm_eps: float = 1e-5,
        act_approximate: str = "tanh",
        input_mean: Sequence[float] = CIFAR100_MEAN,
        input_std: Sequence[float] = CIFAR100_STD,
        class_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        if len(stem_channels) != len(stem_strides):
            raise ValueError(f"stem_channels ({len(stem_channels)}) and stem_strides ({len(stem_strides)}) "
                             "must have the same length")
        self.num_classes, self.embed_dim, self.attention = num_classes, embed_dim, attention
        self.variant: str | None = None  # the registered name it was built as (eanet.models.registry)
        config = getattr(self, "_hub_mixin_config", None)
        if isinstance(config, dict):  # config.json says what it holds
            config.update(architecture=type(self).__name__, variant=None)
        self.img_size, self.in_chans = img_size, in_chans
        self.class_names = list(class_names) if class_names is not None else None
        self.normalize = InputNormalize(input_mean, input_std)
        if stem == "patch":
            self.stem = PatchEmbed(in_chans=in_chans, dim=embed_dim, patch_size=patch_size)
        elif stem == "conv":
            self.stem = ConvStem(in_chans=in_chans, dim=embed_dim, channels=stem_channels, strides=stem_strides,
                                 act=stem_act)
        else:
            raise ValueError(f"unknown stem {stem!r}: expected 'patch' or 'conv'")
        rows, cols = self.stem.output_size(img_size, img_size)
        self.num_tokens = rows * cols
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim)) if pos_embed else None

        if attention == "external":
            mixer_kwargs = dict(expansion=expansion, num_heads=num_heads, memory_size=memory_size,
                                memory_bias=memory_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        else:
            mixer_kwargs = dict(num_heads=num_heads, head_dim=head_dim, attn_drop=attn_drop, proj_drop=proj_drop)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, attention=attention, mixer_kwargs=mixer_kwargs, mlp_dim=mlp_dim, mlp_drop=mlp_drop,
                  drop_path=drop_path * i / max(depth - 1, 1), norm_eps=norm_eps, act_approximate=act_approximate)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else nn.Identity()
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(embed_dim, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as the Keras example's Keras layers are: Glorot-uniform kernels with zero biases, the
        position embedding uniform in +-0.05 (Keras' ``Embedding``)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (PatchEmbed, SelfAttention)):
                m.reset_parameters()
        if self.pos_embed is not None:
            nn.init.uniform_(self.pos_embed, -0.05, 0.05)

    def set_input_stats(self, mean: Sequence[float], variance: Sequence[float]) -> None:
        """Adapt the input normalisation to a training set, like Keras' ``Normalization.adapt``."""
        self.normalize.set_stats(mean, variance)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels ``(B, C, H, W)`` -> tokens ``(B, N, d)`` after the blocks (and the final norm)."""
        height, width = x.shape[-2:]
        x = self.stem(self.normalize(x))
        if self.pos_embed is not None:
            x = x + self.position_embedding(height, width)
        return self.norm(self.blocks(x))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What each block's token mixer attends to, on the token grid, for raw pixels ``x`` ``(B, C, H, W)``.

        One tensor per block, ``(B, heads, U, H', W')`` with ``(H', W')`` the token grid:

        - external attention: ``U = S``, each memory unit's weights over the tokens after the double
          normalisation (the paper's ``A = Norm(F M_k^T)``: a softmax over the N tokens, then L1 over the
          S units of each head, so at every token the S weights of a head sum to 1);
        - self-attention: ``U = 1``, each head's softmax map averaged over the queries: how much
          attention each token *receives*, on average (each map sums to 1 over the grid).

        Computed by the layers' reference forward (the fused kernels never form these maps), in eval
        mode without dropout; the model's own mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            rows, cols = self.stem.output_size(*x.shape[-2:])
            tokens = self.stem(self.normalize(x))
            if self.pos_embed is not None:
                tokens = tokens + self.position_embedding(*x.shape[-2:])
            maps = []
            for block in self.blocks:
                tokens, attn = block(tokens, return_attention=True)
                # external: (B, N, heads, S) -> (B, heads, S, N); self: (B, heads, N queries, N keys) -> mean
                # over the queries -> (B, heads, 1, N)
                attn = attn.permute(0, 2, 3, 1) if self.attention == "external" else attn.mean(dim=2).unsqueeze(2)
                maps.append(attn.reshape(*attn.shape[:3], rows, cols))
            return maps
        finally:
            self.train(was_training)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The ``(1, N, d)`` position embedding for a ``height x width`` input: the learned one at the
        training size, bilinearly resized to the token grid at any other (progressive resizing trains
        on smaller images; :mod:`eanet.train.resolution`)."""
        if (height, width) == (self.img_size, self.img_size):
            return self.pos_embed
        rows, cols = self.stem.output_size(height, width)
        side = math.isqrt(self.num_tokens)
        grid = self.pos_embed.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)
        return grid.flatten(2).transpose(1, 2)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``(B, N, d)`` -> pooled features ``(B, d)`` (``pre_logits``) or logits ``(B, classes)``."""
        x = self.head_drop(x.mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels ``(B, C, H, W)`` (uint8 or float, 0-255) -> logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def _save_pretrained(self, save_directory) -> None:
        """``model.safetensors`` for ``save_pretrained``: written atomically, honouring the umask."""
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(Path(save_directory) / "model.safetensors", save(tensors, metadata={"format": "pt"}))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0 gives an identity: features out)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: no head), got {num_classes!r}")
        self.num_classes = num_classes
        self.class_names = None
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        config = getattr(self, "_hub_mixin_config", None)
        if isinstance(config, dict):  # keep config.json in step with the new head
            config.update(num_classes=num_classes, class_names=None)
