"""`eanet train` under torchrun on CPU (gloo): two processes match one with the same global batch."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from trainhelp import TINY, env, run_cli, weights

from eanet.train.checkpoint import load_checkpoint

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


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    args = [*TINY, "--epochs", "6", "--jsonl"]
    run = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519", "-m",
                "eanet", "train"]
    proc = subprocess.Popen([*torchrun, *args, "--out", str(run)], env=env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert json.loads(proc.stdout.readline())["epoch"] == 1  # rank 0's first epoch line
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGINT)  # one worker only: the other hears of it through the step's all-reduce
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    stops = re.findall(r"error: stopped by (SIGINT|a signal to another process of the run) "
                       r"(?:in epoch (\d+) at step (\d+) of \d+|after epoch (\d+))", err)
    assert sorted(s[0] for s in stops) == ["SIGINT", "a signal to another process of the run"], err[-3000:]
    assert stops[0][1:] == stops[1][1:]  # both at the same step
    state = load_checkpoint(run / "checkpoint-last.pt")
    epoch, step, after = stops[0][1:]
    assert (state["epoch"], state["step_in_epoch"]) == ((int(epoch) - 1, int(step)) if epoch else (int(after), 0))

    resumed = subprocess.run([*torchrun, "--resume", str(run), "--quiet"], env=env(tmp_path), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / "metrics.csv").read_text().count("\n") == 7  # header and six epochs, each once
