"""`eanet train` under torchrun on CPU (gloo): two processes match one with the same global batch."""

import subprocess
import sys

import pytest
from trainhelp import TINY, env, run_cli, weights

# dropout, augmentation and label noise off, so both runs compute the same function; what is left is
# the order of floating-point sums (the gradient all-reduce adds the two halves of the batch).
DETERMINISTIC = [*TINY, "--epochs", "2", "--augment", "none", "--quiet", "--set", "model_args.attn_drop=0",
                 "--set", "model_args.proj_drop=0", "--set", "model_args.mlp_drop=0"]
TOLERANCE = 1e-4  # max abs difference of any weight after 20 AdamW steps


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    single = tmp_path / "single"
    one = run_cli(["train", *DETERMINISTIC, "--out", str(single)], tmp_path)
    assert one.returncode == 0, one.stderr

    ddp = tmp_path / "ddp"
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "eanet",
         "train", *DETERMINISTIC, "--out", str(ddp)],
        env=env(tmp_path), capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = weights(single), weights(ddp)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= TOLERANCE, f"max abs weight difference {worst:.2e}"
    # only rank 0 wrote: one metrics file, no stray files from rank 1
    assert (ddp / "metrics.csv").read_text().count("\n") == 3
