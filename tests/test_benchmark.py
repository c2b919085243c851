"""``eanet benchmark`` (model speed and --scaling) and the fast paths it measures.

Speed targets are not asserted here: only that the benchmark reports what it promises, and that the fast
layers still compute the Keras example's function.
"""

import json
import shutil

import pytest
import torch

from eanet.cli import main
from eanet.layers import ExternalAttention, double_normalize
from eanet.layers import kernels as fused_mod

# one thread: on a shared 2-core machine, two-thread OpenMP regions stall behind other processes' threads
TINY = ["--steps", "2", "--repeats", "1", "--batch-size", "8", "--warmup", "1", "--peak-size", "128", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *args):
    capsys.readouterr()
    main(["benchmark", *args])
    return capsys.readouterr().out


def test_benchmark_json_has_positive_throughputs(capsys):
    result = json.loads(run_cli(capsys, *TINY, "--json"))
    for key in ("train_images_per_second", "inference_images_per_second", "train_achieved_flops",
                "inference_achieved_flops", "matmul_peak_flops", "train_flops_per_image"):
        assert result[key] > 0, key
    assert 0 < result["train_fraction_of_peak"] < 10
    assert result["train_peak_memory_bytes"] > 0  # activations of a batch of 8 at least
    assert result["model"] == "eanet_keras" and result["batch_size"] == 8 and result["dtype"] == "fp32"
    # the counted FLOPs are the Keras example's architecture: 3 x forward for a training step
    assert result["train_flops_per_image"] == pytest.approx(3 * result["inference_flops_per_image"], rel=0.01)


def test_benchmark_bf16_and_threads(capsys):
    result = json.loads(run_cli(capsys, *TINY, "--dtype", "bf16", "--no-memory", "--json"))
    assert result["dtype"] == "bf16" and result["threads"] == 1
    assert result["train_images_per_second"] > 0 and result["inference_images_per_second"] > 0
    assert result["train_peak_memory_bytes"] is None
    # the fraction of peak is against the bf16 matrix-product peak (the fp32 one on a processor whose bf16
    # products are emulated and slower), and the report says which kernels ran
    from eanet.layers.kernels.gate import _bf16_dot_products

    assert result["matmul_peak_dtype"] in (("bf16",) if _bf16_dot_products() else ("bf16", "fp32"))
    assert 0 < result["train_fraction_of_peak"] < 1
    expected = "bf16" if fused_mod.fused_kernels_available() and fused_mod.bf16_kernels_available() else "off"
    assert result["kernel_precision"] == expected


def test_benchmark_bf16_without_bf16_dot_products_says_it_fell_back(capsys, monkeypatch):
    monkeypatch.setenv("EANET_BF16_KERNELS", "0")
    out = run_cli(capsys, *TINY, "--dtype", "bf16", "--no-memory")
    assert "fused CPU kernels: no" in out and "% of peak" in out


def test_benchmark_table_output(capsys):
    out = run_cli(capsys, *TINY, "--no-memory", "--model", "vit_keras")
    assert "vit_keras" in out and "img/s" in out and "% of peak" in out


def test_benchmark_times_a_recipes_model_with_overrides(capsys):
    result = json.loads(run_cli(capsys, *TINY, "--no-memory", "--recipe", "cifar100-fast", "--set",
                                "model_args.depth=1", "--set", "model_args.attention=self", "--json"))
    assert result["model"] == "eanet_conv_small"  # the recipe's model, then --set
    assert result["model_args"] == {"depth": 1, "attention": "self"} and result["train_images_per_second"] > 0
    out = run_cli(capsys, *TINY, "--no-memory", "--recipe", "cifar100-fast")
    assert out.startswith("eanet_conv_small (cifar100-fast recipe) on")


@pytest.mark.parametrize("args, message", [
    (["--model", "no_such_model"], "unknown model"),
    (["--device", "warp9"], "unknown device"),
    (["--data", "--device", "warp9"], "unknown device"),
    (["--scaling", "--device", "warp9"], "unknown device"),
    (["--batch-size", "0"], "batch size"),
    (["--scaling", "--tokens", "64,x"], "--tokens"),
    (["--set", "lr=0.1"], "model_args.KEY=VALUE only"),
    (["--set", "model_args.no_such_arg=1"], "no_such_arg"),
])
def test_bad_input_is_a_one_line_error(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", *args])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_scaling_json_rows(capsys, tmp_path):
    plot = tmp_path / "scaling.png"
    rows = json.loads(run_cli(capsys, "--scaling", "--tokens", "32,64", "--batch-size", "1", "--repeats", "1",
                              "--threads", "1", "--out", str(plot), "--json"))
    assert [(r["attention"], r["tokens"]) for r in rows] == [("external", 32), ("external", 64), ("self", 32),
                                                              ("self", 64)]
    for r in rows:
        assert r["seconds_per_step"] > 0 and r["peak_memory_bytes"] > 0 and r["status"] == "ok"
        assert r["seconds_per_token"] == pytest.approx(r["seconds_per_step"] / r["tokens"])
    assert plot.stat().st_size > 1000


def test_scaling_records_null_when_the_memory_limit_is_hit(capsys, tmp_path):
    # past the fused kernel's token limit, dropout makes self-attention take PyTorch's math path, which holds
    # the N x N matrix: with a limit of 0.5 MB the N=1100 point (4 heads x 1100^2 x 4 bytes x 4 tensors = 77 MB)
    # is not run; N=32 is (by the fused kernel where it is built, which holds no N x N tensor across the step)
    from eanet.layers.kernels import SELF_ATTENTION_MAX_TOKENS

    big = SELF_ATTENTION_MAX_TOKENS + 76
    rows = json.loads(run_cli(capsys, "--scaling", "--tokens", f"32,{big}", "--batch-size", "1", "--repeats", "1",
                              "--threads", "1", "--dropout", "0.2", "--memory-limit", "0.0005",
                              "--out", str(tmp_path / "s.png"), "--json"))
    by = {(r["attention"], r["tokens"]): r for r in rows}
    assert by[("self", big)]["peak_memory_bytes"] is None and by[("self", big)]["seconds_per_step"] is None
    assert by[("self", big)]["status"].startswith("skipped")
    assert "math" in by[("self", big)]["kernel"]
    assert by[("self", 32)]["status"] == "ok"
    if fused_mod.fused_kernels_available():
        assert by[("self", 32)]["kernel"] == "fused CPU kernel (eanet)"
    assert all(by[("external", n)]["status"] == "ok" for n in (32, big))  # no N x N matrix there


def test_scaling_records_out_of_memory_instead_of_crashing(monkeypatch):
    from eanet.benchmarks import scaling

    real = scaling._measure

    def fake(module, kind, n, *args, **kwargs):
        if kind == "self" and n > 32:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 68719476736 bytes.")
        return real(module, kind, n, *args, **kwargs)

    monkeypatch.setattr(scaling, "_measure", fake)
    rows = scaling.benchmark_scaling(tokens=(32, 64), batch_size=1, repeats=1, memory=False, threads=1)
    oom = [r for r in rows if r["status"].startswith("out of memory")]
    assert [(r["attention"], r["tokens"]) for r in oom] == [("self", 64)]
    assert oom[0]["peak_memory_bytes"] is None and oom[0]["seconds_per_step"] is None
    assert "OOM" in scaling.format_table(rows)


def test_peak_memory_sees_a_known_allocation():
    from eanet.benchmarks.model_speed import peak_memory_bytes

    def fn():
        big = torch.ones(1_000_000)  # 4 MB, freed on return
        return float(big[0])

    assert 4_000_000 <= peak_memory_bytes(fn, torch.device("cpu")) < 8_000_000


# --- the fast paths compute the Keras example's function -------------------------------------------------------------

needs_kernels = pytest.mark.skipif(not fused_mod.fused_kernels_available(), reason="fused CPU kernels unavailable")


@pytest.mark.parametrize("batch, tokens", [(3, 40), (1, 70)])  # sample-parallel and row-parallel kernels
def test_fast_external_attention_equals_step_by_step(batch, tokens):
    torch.manual_seed(0)
    fast = ExternalAttention(64, attn_drop=0.0, proj_drop=0.0)
    slow = ExternalAttention(64, attn_drop=0.0, proj_drop=0.0, composed=False)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(batch, tokens, 64, requires_grad=True)
    y_fast, y_slow = fast(x), slow(x)
    torch.testing.assert_close(y_fast, y_slow, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y_slow)
    grads_fast = torch.autograd.grad(y_fast, [x, fast.expand.weight, fast.memory_k.weight, fast.memory_v.weight,
                                              fast.memory_v.bias, fast.proj.weight, fast.proj.bias], g)
    grads_slow = torch.autograd.grad(y_slow, [x, slow.expand.weight, slow.memory_k.weight, slow.memory_v.weight,
                                              slow.memory_v.bias, slow.proj.weight, slow.proj.bias], g)
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


@needs_kernels
@pytest.mark.parametrize("batch, tokens", [(4, 33), (1, 50)])
def test_fused_kernel_dropout_masks_agree_between_forward_and_backward(batch, tokens):
    ops = torch.ops.eanet_fused
    torch.manual_seed(1)
    d, heads, size = 16, 4, 4
    g_width = heads * size
    x = torch.randn(batch, tokens, d, requires_grad=True)
    weights = [(torch.randn(g_width, d) * 0.3).requires_grad_(), (torch.randn(g_width) * 0.1).requires_grad_(),
               (torch.randn(d, g_width) * 0.3).requires_grad_(), (torch.randn(d) * 0.1).requires_grad_()]
    seed = torch.tensor(1234)
    # reference in autograd, with the kernel's own masks (streams 1 and 2 of the same seed)
    mask_attn = ops.dropout(torch.ones(batch, tokens, g_width), 0.3, seed, 1).view(batch, tokens, heads, size)
    mask_proj = ops.dropout(torch.ones(batch, tokens, d), 0.2, seed, 2)
    logits = (x @ weights[0].t() + weights[1]).view(batch, tokens, heads, size)
    attn = double_normalize(logits, token_dim=1)
    ref = ((attn * mask_attn).reshape(batch, tokens, g_width) @ weights[2].t() + weights[3]) * mask_proj
    out = ops.ea_forward(x.detach(), *[w.detach() for w in weights], heads, 1e-9, 0.3, 0.2, seed, 0)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, [x, weights[0], weights[2], weights[3]], g)
    got = ops.ea_backward(g, x.detach(), *[w.detach() for w in weights], heads, 1e-9, 0.3, 0.2, seed, 0)
    for a, b in zip((got[0], got[1], got[3], got[4]), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_fast_dropout_keeps_the_right_fraction_and_scales():
    torch.manual_seed(0)
    layer = fused_mod.FastDropout(0.2).train()
    x = torch.ones(1_000_000, requires_grad=True)
    y = layer(x)
    assert abs(float((y != 0).float().mean()) - 0.8) < 0.005
    assert set(torch.unique(y.detach()).tolist()) == {0.0, 1.25}
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # same mask in the backward pass
    assert torch.equal(layer.eval()(x), x)


@needs_kernels
@pytest.mark.parametrize("batch, tokens, heads, head_dim, p",
                         [(3, 37, 4, 16, 0.3), (2, 64, 2, 8, 0.0), (1, 5, 3, 4, 0.2)])
def test_fused_self_attention_equals_autograd_with_its_own_masks(batch, tokens, heads, head_dim, p):
    ops = torch.ops.eanet_fused
    torch.manual_seed(0)
    qkv = torch.randn(batch, tokens, 3 * heads * head_dim, requires_grad=True)
    seed, scale = torch.tensor(77), head_dim**-0.5
    mask = ops.dropout(torch.ones(batch, heads, tokens, tokens), p, seed, 6)  # the kernel's stream 6
    q, k, v = qkv.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    logits = (q @ k.transpose(-2, -1)) * scale
    ref = ((logits.softmax(-1) * mask) @ v).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    out, lse = ops.sa_forward(qkv.detach(), heads, scale, p, seed, 0)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, logits.logsumexp(-1).detach(), rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    (expected,) = torch.autograd.grad(ref, qkv, g)
    got = ops.sa_backward(g, qkv.detach(), out, lse, heads, scale, p, seed, 0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@needs_kernels
def test_self_attention_module_fast_path_equals_pytorch_path(monkeypatch):
    from eanet.layers import SelfAttention
    from eanet.layers import attention as attention_mod

    torch.manual_seed(0)
    layer = SelfAttention(32, num_heads=4, head_dim=16)
    x = torch.randn(3, 20, 32, requires_grad=True)
    calls = []
    real = attention_mod.self_attention
    monkeypatch.setattr(attention_mod, "self_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    y_fast = layer(x)
    assert calls, "the fused kernel did not run"
    grads_fast = torch.autograd.grad(y_fast.square().sum(), [x, layer.qkv.weight, layer.proj.weight])
    monkeypatch.setattr(attention_mod, "self_attention", lambda *a, **k: None)  # PyTorch's SDPA
    y_slow = layer(x)
    grads_slow = torch.autograd.grad(y_slow.square().sum(), [x, layer.qkv.weight, layer.proj.weight])
    torch.testing.assert_close(y_fast, y_slow, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    # dropout: the same masks forward and backward, about p of the attention dropped
    layer.attn_drop = 0.5
    torch.manual_seed(1)
    y1 = layer(x)
    torch.manual_seed(1)
    y2 = layer(x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert not torch.allclose(y1, y_fast)


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on this machine: the kernels cannot build")
def test_the_kernels_build_where_there_is_a_compiler(monkeypatch):
    """Without this, a kernel source that stops compiling would only turn the kernel tests into skips."""
    monkeypatch.delenv("EANET_FUSED", raising=False)
    assert fused_mod.fused_kernels_available()
    assert {p.name for p in fused_mod.build.CSRC.glob("*.cpp")} == {
        "dropout.cpp", "external_attention.cpp", "mlp.cpp", "ops.cpp", "self_attention.cpp"}


def test_benchmark_data_reports_the_data_path(capsys):
    result = json.loads(run_cli(capsys, "--data", "--steps", "3", "--repeats", "2", "--json"))
    assert result["policy"] == "keras" and result["images_per_second"] > 0 and len(result["runs"]) == 2
