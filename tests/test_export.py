"""``eanet export`` and :mod:`eanet.export`: ONNX files with a dynamic batch that match PyTorch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import eanet
from eanet.cli import main
from eanet.errors import EanetError
from eanet.export import EXAMPLE_BATCH, export_onnx

TOLERANCE = 1e-4


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_diff(model, session, batch):
    gen = torch.Generator().manual_seed(batch)
    x = torch.randint(0, 256, (batch, 3, model.img_size, model.img_size), generator=gen).float()
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(["logits"], {"pixels": x.numpy()})
    assert got.shape == expected.shape == (batch, model.num_classes)
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize("name", ["eanet_keras", "vit_keras"])
def test_onnx_matches_pytorch_at_two_batch_sizes(name, tmp_path):
    torch.manual_seed(0)
    model = eanet.create_model(name, depth=2).eval()  # 2 of the 8 identical blocks keep the test quick
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    assert path == tmp_path / f"{name}.onnx" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["pixels"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]  # dynamic batch
    session = _session(path)
    for batch in (1, 5):  # both differ from the export example
        assert batch != EXAMPLE_BATCH
        assert _max_diff(model, session, batch) <= TOLERANCE


def test_older_opset_uses_the_torchscript_exporter(tmp_path):
    model = eanet.create_model("vit_keras", depth=1, num_classes=7).eval()
    path = export_onnx(model, tmp_path / "old.onnx", opset=17)
    opsets = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17
    session = _session(path)
    assert max(_max_diff(model, session, b) for b in (1, 4)) <= TOLERANCE


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    import eanet.export as export

    model = eanet.create_model("eanet_keras", depth=1, num_classes=3)
    target = export_onnx(model, tmp_path / "model.onnx")  # an earlier export, which a new one may replace
    previous = target.read_bytes()
    monkeypatch.setattr(export, "_export_to", lambda model, path, opset: path.write_bytes(b""))  # an empty model
    with pytest.raises(EanetError, match="onnx.checker"):
        export_onnx(model, target)
    assert target.read_bytes() == previous and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert model.training  # the caller's mode is restored
    with pytest.raises(EanetError, match="opset"):
        export_onnx(model, target, opset=7)


def test_only_an_onnx_file_eanet_exported_is_replaced(tmp_path):
    from eanet.export import MARK, is_eanet_onnx

    model = eanet.create_model("eanet_keras", depth=1, num_classes=3).eval()
    ours = export_onnx(model, tmp_path / "ours.onnx")
    assert is_eanet_onnx(ours)
    proto = onnx.load(str(ours))  # the same graph without eanet's mark: somebody else's ONNX file
    kept = [(p.key, p.value) for p in proto.metadata_props if (p.key, p.value) != MARK]
    del proto.metadata_props[:]
    for key, value in kept:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp_path / "theirs.onnx"))
    before = (tmp_path / "theirs.onnx").read_bytes()
    assert not is_eanet_onnx(tmp_path / "theirs.onnx")
    with pytest.raises(EanetError, match="eanet did not write it"):
        export_onnx(model, tmp_path / "theirs.onnx")
    assert (tmp_path / "theirs.onnx").read_bytes() == before
    assert export_onnx(model, ours) == ours and is_eanet_onnx(ours)


def test_cli_export(tmp_path, capsys):
    model = eanet.create_model("eanet_keras", depth=1, num_classes=5, class_names=list("abcde"))
    model.save_pretrained(tmp_path / "model")
    main(["export", str(tmp_path / "model"), "--onnx", str(tmp_path / "out" / "m.onnx")])
    out = capsys.readouterr().out
    assert "max abs difference" in out and "pixels" in out and "logits" in out
    assert _max_diff(model.eval(), _session(tmp_path / "out" / "m.onnx"), 2) <= TOLERANCE


def test_cli_export_bad_model_dir(tmp_path, capsys):
    cmd = [sys.executable, "-m", "eanet", "export", str(tmp_path / "nowhere"), "--onnx", str(tmp_path / "x.onnx")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: model folder not found: {tmp_path / 'nowhere'}"]
    (tmp_path / "empty").mkdir()  # a folder that is not a saved model, in-process
    with pytest.raises(SystemExit) as info:
        main(["export", str(tmp_path / "empty"), "--onnx", str(tmp_path / "x.onnx")])
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tmp_path / "empty") in lines[0]
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("attention", ["external", "self"])
def test_model_card_names_the_token_mixer(attention, tmp_path):
    # a self-attention baseline's card must not call itself external attention (and the reverse)
    from eanet.hub import write_model_card

    metrics = {"top1": 0.5, "top5": 0.8, "loss": 1.5, "count": 100}
    model = eanet.create_model("eanet_keras" if attention == "external" else "vit_keras", depth=1)
    path = write_model_card(tmp_path, run_name="run", model=model, dataset="CIFAR-100", dataset_id="cifar100",
                            test_metrics=metrics, config={"tta": "none"}, parameters=10, command="eanet train",
                            epochs=1, steps=10)
    card = path.read_text()
    other = "self" if attention == "external" else "external"
    assert f"{attention}-attention" in card and f"{other}-attention" not in card
    mixer = next(line for line in card.splitlines() if line.startswith("Its token mixer is"))
    assert ("External Attention using Two" in mixer) == (attention == "external")
    assert ("self-attention" in mixer) == (attention == "self")
    assert "arxiv.org/abs/2105.02358" in card  # the paper, whichever the mixer


def test_a_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    """Without the onnx extra, `eanet export` says which extra to install, in one line."""
    import builtins

    from eanet.cli import main

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime", "onnxscript"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    model = eanet.create_model("eanet_keras", depth=1)
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    for name in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "m"), "--onnx", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip()
    assert err == "error: eanet export needs the 'onnx' extra (module onnx is missing): pip install 'eanet[onnx]'"
