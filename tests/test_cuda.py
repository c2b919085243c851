"""On a CUDA GPU: every model forward and backward (fp32 and bf16 autocast), the fused CPU kernels standing
aside, a tiny training run with its exact resume, evaluation and export. Skipped without CUDA
(scripts/gpu_check.sh runs them on a GPU machine)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from trainhelp import TINY, env, run_cli

import eanet
from eanet.layers.kernels import use_kernels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: these run on a GPU machine (scripts/gpu_check.sh)")
CUDA_TINY = [*TINY, "--device", "cuda"]


@pytest.mark.parametrize("name", eanet.list_models())
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_models_forward_and_backward_on_the_gpu(name, precision):
    torch.manual_seed(0)
    model = eanet.create_model(name).cuda().train()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
    assert logits.shape == (4, 100) and logits.device.type == "cuda"
    logits.float().logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["eanet_keras", "vit_keras", "eanet_conv_small"])
def test_the_fused_cpu_kernels_stand_aside_and_the_gpu_computes_the_same_function(name):
    torch.manual_seed(0)
    model = eanet.create_model(name).eval()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert not use_kernels(torch.zeros(1, device="cuda"))
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=2e-3)


def test_training_resume_evaluation_and_export_on_the_gpu(tmp_path):
    args = [*CUDA_TINY, "--epochs", "3", "--set", "checkpoint_seconds=0", "--quiet"]
    straight = tmp_path / "straight"
    result = run_cli(["train", *args, "--out", str(straight)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((straight / "results.json").read_text())["test"]["top1"] >= 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "eanet", "train", *args, "--out", str(killed)], env=env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if torch.load(killed / "checkpoint-last.pt", weights_only=True)["global_step"] >= 12:
                break
        except Exception:  # noqa: BLE001 - not written yet, or being replaced
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(["train", "--resume", str(killed), "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    exact = all(torch.equal(a[k], b[k]) for k in a)
    close = all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    print(f"resume on the GPU: {'bit-exact' if exact else 'within 1e-5' if close else 'DIFFERENT'}")
    assert close

    gpu = run_cli(["evaluate", str(straight), "--device", "cuda", "--json"], tmp_path)
    cpu = run_cli(["evaluate", str(straight), "--json"], tmp_path)
    assert gpu.returncode == 0 and cpu.returncode == 0, gpu.stderr
    assert json.loads(gpu.stdout)["top1"] == pytest.approx(json.loads(cpu.stdout)["top1"], abs=0.02)
    exported = run_cli(["export", str(straight), "--onnx", str(tmp_path / "model.onnx")], tmp_path)
    assert exported.returncode == 0, exported.stderr
