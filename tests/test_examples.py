"""The scripts in examples/ run as their docstrings say (on synthetic data, a step or two)."""

import re
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
    assert len(re.findall(r"^Epoch 1/\d+ - .* - val_accuracy: ", proc.stdout, re.M)) == 2  # as fit() prints them
    for run in (out, tmp_path / "runs" / "keras-example-vit"):
        assert (run / "model.safetensors").is_file() and (run / "README.md").is_file()
    assert (out / "losses.png").is_file()


README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_readme_library_snippet_runs_as_written(tmp_path, monkeypatch):
    snippet = README.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # it saves a model folder
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["out"].shape == (2, 256, 64) and namespace["attn"].shape == (2, 256, 16, 16)
    assert namespace["logits"].shape == (8, 100) and namespace["model"].num_classes == 10
    assert len(namespace["maps"]) == 8 and (tmp_path / "my-eanet" / "model.safetensors").is_file()


def test_the_readme_model_table_is_the_registry():
    import eanet
    from eanet.models.inspect import count_macs, count_parameters

    rows = re.findall(r"^\| (`[a-z0-9_]+`(?:, `[a-z0-9_]+`)*) \| .* \| ([\d,/ ]+) \| ([\d. M/]+) \|$", README, re.M)
    listed = {}
    for names, params, macs in rows:
        for name, p, m in zip(re.findall(r"`(\w+)`", names), params.split("/"), macs.split("/"), strict=True):
            listed[name] = (int(p.strip().replace(",", "")), m.strip())
    assert sorted(listed) == sorted(eanet.list_models())
    for name, (params, macs) in listed.items():
        model = eanet.create_model(name)
        assert params == count_parameters(model), name
        assert macs == f"{count_macs(model) / 1e6:.1f} M", name


def test_the_readme_command_table_names_every_command():
    from eanet.cli import COMMANDS

    table = README.split("## The command line", 1)[1].split("\n\n", 2)[1]
    named = set(re.findall(r"`eanet ([a-z-]+)", table)) | set(re.findall(r", `eanet ([a-z-]+)", table))
    assert named == set(COMMANDS)
