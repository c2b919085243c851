"""Shared pieces of the training tests: a tiny model on the synthetic dataset, run in or out of process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TINY = ["--dataset", "synthetic", "--recipe", "keras-example", "--batch-size", "32", "--threads", "1",
        "--set", "model_args.depth=1", "--set", "model_args.embed_dim=16", "--set", "model_args.num_heads=4",
        "--set", "model_args.mlp_dim=16", "--set", "eval_batch_size=100"]


def env(tmp_path: Path) -> dict:
    e = dict(os.environ, EANET_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    e.pop("EANET_DATA_DIR", None)
    return e


def run_cli(args: list[str], tmp_path: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eanet", *args], env=env(tmp_path), capture_output=True,
                          text=True, timeout=600, **kwargs)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def finished_run(root: Path) -> Path:
    """A tiny run trained for one epoch in ``root/run``: weights, config.json, card, metrics and curves."""
    result = run_cli(["train", *TINY, "--epochs", "1", "--out", str(root / "run"), "--quiet"], root)
    assert result.returncode == 0, result.stderr
    return root / "run"
