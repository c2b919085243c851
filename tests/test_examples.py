"""The scripts in examples/ run as their docstrings say (on synthetic data, a step or two)."""

import subprocess
import sys
from pathlib import Path

from trainhelp import env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_keras_example_walkthrough_runs_end_to_end(tmp_path):
    out = tmp_path / "runs" / "keras-example"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "keras_example.py"), "--dataset", "synthetic",
                           "--max-steps", "1", "--out", str(out)], env=env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "EANet: 361,380 trainable parameters" in proc.stdout
    assert "Test accuracy:" in proc.stdout and "ViT test accuracy:" in proc.stdout
    for run in (out, tmp_path / "runs" / "keras-example-vit"):
        assert (run / "model.safetensors").is_file() and (run / "README.md").is_file()
    assert (out / "losses.png").is_file()
