"""The external attention module on its own, and its self-attention counterpart."""

import re

import numpy as np
import pytest
import torch

from eanet import ExternalAttention, SelfAttention
from eanet.layers import double_normalize


def test_token_and_feature_map_layouts_agree():
    torch.manual_seed(0)
    layer = ExternalAttention(32, expansion=2, num_heads=4, memory_size=8).eval()
    tokens = torch.randn(2, 6 * 5, 32)
    out_tokens = layer(tokens)
    assert out_tokens.shape == tokens.shape
    fmap = tokens.transpose(1, 2).reshape(2, 32, 6, 5)  # (B, C, H, W), row-major tokens
    out_map = layer(fmap)
    assert out_map.shape == fmap.shape
    torch.testing.assert_close(out_map.flatten(2).transpose(1, 2), out_tokens)


def test_double_normalisation_rows_sum_to_one_over_memory():
    torch.manual_seed(0)
    layer = ExternalAttention(64, num_heads=16, memory_size=16).eval()
    _, attn = layer(torch.randn(3, 50, 64), return_attention=True)
    assert attn.shape == (3, 50, 16, 16)  # (B, N, heads, S)
    torch.testing.assert_close(attn.sum(dim=-1), torch.ones(3, 50, 16))
    assert (attn >= 0).all()


def test_double_normalize_is_softmax_over_tokens_then_l1_over_memory():
    logits = torch.randn(2, 7, 3, 5)
    expected = logits.softmax(dim=1)
    expected = expected / (1e-9 + expected.sum(dim=-1, keepdim=True))
    torch.testing.assert_close(double_normalize(logits, token_dim=1), expected)
    # the first normalisation alone: each memory unit's weights over the tokens sum to one
    torch.testing.assert_close(logits.softmax(dim=1).sum(dim=1), torch.ones(2, 3, 5))


def test_attention_does_not_mix_samples_and_depends_on_every_token():
    torch.manual_seed(0)
    layer = ExternalAttention(16, expansion=1, num_heads=2, memory_size=4).eval()
    x = torch.randn(2, 10, 16, requires_grad=True)
    out = layer(x)
    out[0, 0].sum().backward()
    assert x.grad[1].abs().sum() == 0  # no leakage across the batch
    assert (x.grad[0].abs().sum(dim=-1) > 0).all()  # softmax over tokens couples all of them


@pytest.mark.parametrize("cls", [ExternalAttention, SelfAttention])
def test_dropout_only_in_training(cls):
    torch.manual_seed(0)
    layer = cls(32, num_heads=4, attn_drop=0.5, proj_drop=0.5)
    x = torch.randn(2, 12, 32)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def test_memory_size_and_bias_options():
    layer = ExternalAttention(64, expansion=1, num_heads=1, memory_size=64, memory_bias=False)
    assert layer.memory_k.weight.shape == (64, 64) and layer.memory_k.bias is None
    assert layer.memory_v.bias is None
    with pytest.raises(ValueError, match="divisible"):
        ExternalAttention(10, expansion=1, num_heads=3)


def test_bad_input_rank_is_refused():
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        ExternalAttention(8, expansion=1, num_heads=1)(torch.randn(8, 8))


def test_self_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    layer = SelfAttention(16, num_heads=2, head_dim=8).eval()
    x = torch.randn(2, 5, 16)
    out, attn = layer(x, return_attention=True)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 5))
    q, k, v = layer.qkv(x).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    manual = (attn @ v).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(out, layer.proj(manual))


def test_self_attention_under_bf16_autocast_on_cpu_agrees_with_fp32():
    # under bf16 on the CPU, small N takes the explicit q k^T softmax path instead of PyTorch's flash kernel
    torch.manual_seed(0)
    layer = SelfAttention(32, num_heads=4, head_dim=8)
    x = torch.randn(3, 17, 32, requires_grad=True)
    ref = layer(x)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    (grad,) = torch.autograd.grad(out.float().square().sum(), x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)
    torch.testing.assert_close(grad, ref_grad, atol=0.1, rtol=0.1)


def test_self_attention_dropout_applies_on_the_bf16_cpu_path():
    torch.manual_seed(0)
    layer = SelfAttention(16, num_heads=2, head_dim=8, attn_drop=0.5)
    x = torch.randn(2, 9, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = layer(x), layer(x)
        layer.eval()
        c, d = layer(x), layer(x)
    assert not torch.equal(a, b)  # training: a fresh mask each call
    assert torch.equal(c, d)  # evaluation: no dropout


def test_external_attention_cost_is_linear_in_tokens():
    from torch.utils.flop_counter import FlopCounterMode

    layer = ExternalAttention(64, num_heads=16, memory_size=16)
    flops = []
    for n in (256, 1024):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            layer(torch.randn(1, n, 64))
        flops.append(counter.get_total_flops())
    assert flops[1] == 4 * flops[0]


@pytest.mark.parametrize(("build", "message"), [
    (lambda: ExternalAttention(0), "dim must be a positive integer, got 0"),
    (lambda: ExternalAttention(64, memory_size=0), "memory_size must be a positive integer"),
    (lambda: ExternalAttention(64.0), "dim must be a positive integer, got 64.0"),
    (lambda: ExternalAttention(2, expansion=4, num_heads=2), "leaves no memory units"),
    (lambda: ExternalAttention(64, num_heads=5), "must be divisible by num_heads"),
    (lambda: SelfAttention(2, num_heads=4), "give head_dim"),
    (lambda: SelfAttention(64, num_heads=True), "num_heads must be a positive integer"),
])
def test_sizes_that_build_no_module_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
    ExternalAttention(np.int64(16), num_heads=np.int64(4), memory_size=np.int64(8))  # numpy integers are integers


@pytest.mark.parametrize("module", [ExternalAttention(32, num_heads=4), SelfAttention(32, num_heads=4)])
def test_inputs_of_the_wrong_width_are_named_before_any_kernel_runs(module):
    with pytest.raises(ValueError, match=r"C = 32.*\(2, 10, 16\)"):
        module(torch.randn(2, 10, 16))
    with pytest.raises(ValueError, match=r"\(10, 32\)"):
        module(torch.randn(10, 32))
    if isinstance(module, ExternalAttention):
        with pytest.raises(ValueError, match=r"C = 32 channels, got shape \(2, 16, 4, 4\)"):
            module(torch.randn(2, 16, 4, 4))
