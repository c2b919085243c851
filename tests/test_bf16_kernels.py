"""The fused kernels' bf16 mode: bf16 matrix products with fp32 accumulation, everything else in fp32.

Each kernel's forward and backward pass in bf16 is compared with autograd of the same function in fp32 (the
kernel's own dropout masks applied to the reference), as a relative error of the whole tensor,
``||got - fp32|| / ||fp32||``. Two bounds, both must hold:

- ``TOL = 2e-2``. bf16 keeps 8 significant bits, so each rounding is within 2^-9 = 0.2% relative. A gradient
  here passes through at most four rounded quantities in series (an operand, its product, the next operand,
  that product), so its error stays within a few times 2^-9; 2e-2 is ten times the unit roundoff and
  about 4x the largest error observed (0.2-0.55% on this machine).
- No worse than 1.5x PyTorch's own bf16 autocast of the same function (which rounds the same operands
  and products): the kernels keep autocast's accuracy (observed: within 5% of it, often better).

And a floor: the error is above 1e-4, i.e. the products really were computed in bf16 (fp32 kernels agree
with autograd to ~1e-6).
"""

import pytest
import torch
import torch.nn.functional as F

from eanet.layers import double_normalize
from eanet.layers import kernels as fused_mod
from eanet.models import create_model

TOL = 2e-2
AUTOCAST_FACTOR = 1.5
FLOOR = 1e-4

pytestmark = pytest.mark.skipif(not fused_mod.fused_kernels_available(), reason="fused CPU kernels unavailable")
ops = torch.ops.eanet_fused if fused_mod.fused_kernels_available() else None


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm())


def check(got, ref_fp32, ref_autocast, what):
    """``got`` within the bounds of the module docstring; a bias gradient computed without a matrix product
    (``b_out``, ``b2``: sums of the incoming gradient) may also be exact."""
    err, err_ac = rel_err(got, ref_fp32), rel_err(ref_autocast, ref_fp32)
    exact_allowed = what in ("gradient of b_out", "gradient of b2")
    assert (err > FLOOR or exact_allowed) and err < TOL, f"{what}: relative error {err:.2e} (bounds {FLOOR:g}..{TOL:g})"
    assert err <= AUTOCAST_FACTOR * err_ac, f"{what}: {err:.2e} against PyTorch bf16 autocast's {err_ac:.2e}"


def both_precisions(fn, inputs, grad):
    """Output and input gradients of ``fn`` in fp32 autograd and under bf16 autocast."""
    results = []
    for amp in (False, True):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = fn(*leaves)
        grads = torch.autograd.grad(out.float(), leaves, grad)
        results.append((out.detach().float(), grads))
    return results


@pytest.mark.parametrize("batch, tokens, dim, heads, size, p_attn, p_proj", [
    (3, 40, 64, 16, 16, 0.2, 0.2),   # the Keras example's layer, samples in parallel
    (1, 70, 64, 16, 16, 0.2, 0.0),   # one sample: row blocks in parallel
    (2, 64, 128, 8, 32, 0.0, 0.0),   # the budget models' layer (d=128, S=32)
])
def test_bf16_external_attention_against_fp32_autograd(batch, tokens, dim, heads, size, p_attn, p_proj):
    torch.manual_seed(0)
    width = heads * size
    x = torch.randn(batch, tokens, dim)
    weights = [torch.randn(width, dim) * dim**-0.5, torch.randn(width) * 0.1,
               torch.randn(dim, width) * width**-0.5, torch.randn(dim) * 0.1]
    seed = torch.tensor(99)
    mask_attn = ops.dropout(torch.ones(batch, tokens, width), p_attn, seed, 1).view(batch, tokens, heads, size)
    mask_proj = ops.dropout(torch.ones(batch, tokens, dim), p_proj, seed, 2)

    def reference(x, w_in, b_in, w_out, b_out):
        logits = F.linear(x, w_in, b_in).view(batch, tokens, heads, size)
        attn = double_normalize(logits.float(), token_dim=1)
        return F.linear((attn * mask_attn).reshape(batch, tokens, width), w_out, b_out) * mask_proj

    grad = torch.randn(batch, tokens, dim)
    (ref, ref_grads), (ac, ac_grads) = both_precisions(reference, [x, *weights], grad)
    out = ops.ea_forward(x, *weights, heads, 1e-9, p_attn, p_proj, seed, 1)
    check(out, ref, ac, "output")
    got = ops.ea_backward(grad, x, *weights, heads, 1e-9, p_attn, p_proj, seed, 1)
    for name, g, r, a in zip(("x", "w_in", "w_out", "b_out"), got[:2] + got[3:], ref_grads[:2] + ref_grads[3:],
                             ac_grads[:2] + ac_grads[3:], strict=True):
        check(g, r, a, f"gradient of {name}")
    # b_in shifts one memory unit's logit equally for every token, which the softmax over tokens cancels: its
    # true gradient is zero, so only its size is checked
    assert float(got[2].norm()) < TOL * float(got[1].norm())


@pytest.mark.parametrize("rows, dim, hidden, p1, p2", [(2 * 256, 64, 64, 0.2, 0.2), (1500, 128, 256, 0.0, 0.1)])
def test_bf16_mlp_branch_against_fp32_autograd(rows, dim, hidden, p1, p2):
    torch.manual_seed(1)
    x = torch.randn(rows // 4, 4, dim)
    params = [1 + 0.1 * torch.randn(dim), 0.1 * torch.randn(dim), torch.randn(hidden, dim) * dim**-0.5,
              0.1 * torch.randn(hidden), torch.randn(dim, hidden) * hidden**-0.5, 0.1 * torch.randn(dim)]
    seed = torch.tensor(5)
    mask1 = ops.dropout(torch.ones(rows // 4, 4, hidden), p1, seed, 4)
    mask2 = ops.dropout(torch.ones(rows // 4, 4, dim), p2, seed, 5)

    def reference(x, ln_w, ln_b, w1, b1, w2, b2):
        h = F.linear(F.layer_norm(x, (dim,), ln_w, ln_b, 1e-5), w1, b1)
        return x + F.linear(F.gelu(h.float(), approximate="tanh") * mask1, w2, b2) * mask2

    grad = torch.randn_like(x)
    (ref, ref_grads), (ac, ac_grads) = both_precisions(reference, [x, *params], grad)
    out = ops.mlp_forward(x, *params, 1e-5, 1, p1, p2, seed, 1)
    check(out - x, ref - x, ac - x, "branch output")  # the residual would hide the branch's error
    got = ops.mlp_backward(grad, x, *params, 1e-5, 1, p1, p2, seed, 1)
    check(got[0] - grad, ref_grads[0] - grad, ac_grads[0] - grad, "gradient of x through the branch")
    for name, g, r, a in zip(("ln_w", "ln_b", "w1", "b1", "w2", "b2"), got[1:], ref_grads[1:], ac_grads[1:],
                             strict=True):
        check(g, r, a, f"gradient of {name}")


@pytest.mark.parametrize("batch, tokens, heads, head_dim, p", [(3, 37, 4, 16, 0.3), (2, 64, 4, 64, 0.0)])
def test_bf16_self_attention_against_fp32_autograd(batch, tokens, heads, head_dim, p):
    torch.manual_seed(2)
    qkv = torch.randn(batch, tokens, 3 * heads * head_dim)
    seed, scale = torch.tensor(8), head_dim**-0.5
    mask = ops.dropout(torch.ones(batch, heads, tokens, tokens), p, seed, 6)

    def reference(qkv):
        q, k, v = qkv.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        probs = ((q @ k.transpose(-2, -1)).float() * scale).softmax(-1)
        return ((probs * mask) @ v).transpose(1, 2).reshape(batch, tokens, heads * head_dim)

    grad = torch.randn(batch, tokens, heads * head_dim)
    (ref, (ref_grad,)), (ac, (ac_grad,)) = both_precisions(reference, [qkv], grad)
    out, lse = ops.sa_forward(qkv, heads, scale, p, seed, 1)
    check(out, ref, ac, "output")
    got = ops.sa_backward(grad, qkv, out, lse, heads, scale, p, seed, 1)
    check(got, ref_grad, ac_grad, "gradient of qkv")


@pytest.mark.parametrize("name", ["eanet_keras", "vit_keras", "eanet_conv_small"])
def test_models_under_bf16_autocast_take_the_bf16_kernels(name, monkeypatch):
    """Under ``precision: bf16`` (CPU bf16 autocast) the models' layers run the kernels in bf16 where the
    processor has bf16 dot products, and their gradients stay within TOL of fp32; elsewhere, or with
    EANET_BF16_KERNELS=0, PyTorch's autocast path runs."""
    torch.manual_seed(3)
    net = create_model(name, attn_drop=0.0, proj_drop=0.0, mlp_drop=0.0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 100, (4,))

    def grads(amp):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp), torch.profiler.profile() as prof:
            loss = F.cross_entropy(net(images), labels)
        loss.backward()
        ops_run = {e.key for e in prof.key_averages()}
        return torch.cat([p.grad.flatten() for p in net.parameters()]), ops_run

    ref, _ = grads(False)
    got, ops_run = grads(True)
    kernels = {"eanet_fused::ea_forward", "eanet_fused::sa_forward"} & ops_run
    if fused_mod.bf16_kernels_available():
        assert kernels, "no fused kernel ran under bf16 autocast"
    assert rel_err(got, ref) < TOL
    x = torch.randn(2, fused_mod.gate.BF16_MIN_TOKENS, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_mod.kernel_precision(x) == ("bf16" if fused_mod.bf16_kernels_available() else None)
        assert fused_mod.kernel_precision(x[:, 1:]) is None  # too few tokens for the bf16 kernels to pay
    monkeypatch.setenv("EANET_BF16_KERNELS", "0")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_mod.kernel_precision(x) is None  # the fallback: PyTorch's autocast path
    assert fused_mod.kernel_precision(x) == "fp32"  # the fp32 kernels are unaffected
    _, ops_run = grads(True)
    assert not {"eanet_fused::ea_forward", "eanet_fused::sa_forward"} & ops_run
