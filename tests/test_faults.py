"""Hard to break: bad values, damaged files, a full disk, two writers, kill -9. Each is one `error: ...` line
and a non-zero exit, and what was saved before is byte-identical afterwards."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from fakedata import write_image_folder
from safetensors.torch import load_file, save_file
from trainhelp import TINY, env, finished_run, run_cli

import eanet
from eanet.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EANET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("EANET_DATA_DIR", raising=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, args, *, code=None) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0 and (code is None or exit_info.value.code == code)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "<_io." not in err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (its weights, config.json and card) to break copies of."""
    return finished_run(tmp_path_factory.mktemp("finished"))


def copy_of(run: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for path in run.iterdir():
        if path.is_file():
            (dst / path.name).write_bytes(path.read_bytes())
    return dst


# ---- values out of range or of the wrong type: refused before anything is loaded or written

@pytest.mark.parametrize(("args", "message"), [
    (["--grad-clip", "-1"], "grad_clip must be > 0, got -1.0"),
    (["--grad-clip", "0"], "grad_clip must be > 0"),
    (["--warmup-epochs", "-1"], "warmup_epochs must be in [0, 1], got -1.0"),
    (["--warmup-epochs", "5"], "warmup_epochs must be in [0, 1], got 5.0"),
    (["--set", "epochs=abc"], "epochs must be an integer or null, got 'abc'"),
    (["--set", "lr=[1,2]"], "lr must be a number, got [1, 2]"),
    (["--set", "betas=5"], "betas must be a list of 2 numbers, got 5"),
    (["--set", "betas=[0.9,1.5]"], "betas must be in [0, 1), got 1.5"),
    (["--set", "model_args=hello"], "model_args must be a mapping, got 'hello'"),
    (["--set", "model_args.depth=abc"], "depth must be an integer, got 'abc'"),
    (["--set", "model_args.bogus=1"], "unknown model argument(s) bogus"),
    (["--set", "model_args.depth=10000000"], "depth must be in [1, 256], got 10000000"),
    (["--set", "model_args.embed_dim=8192", "--set", "model_args.mlp_dim=65536", "--set", "model_args.depth=200"],
     "more than the 1,000,000,000 eanet accepts"),
    (["--threads", "-3"], "threads must be in [1, 4096], got -3"),
    (["--weight-decay", "-5"], "weight_decay must be in [0, 1000], got -5.0"),
    (["--set", "label_smoothing=5"], "label_smoothing must be in [0, 1), got 5"),
    (["--set", "eval_batch_size=0"], "eval_batch_size must be in [1, 1e+06], got 0"),
    (["--set", "batch_size=2.5"], "batch_size must be an integer, got 2.5"),
    (["--set", "seed=-1"], "seed must be in [0,"),
    (["--lr", "nan"], "lr must be in (0, 100], got nan"),
    (["--set", "model_args.drop_path=.nan"], "drop_path must be in [0, 0.99], got nan"),
    (["--model", "bogus"], "unknown model 'bogus'"),
    (["--device", "tpu"], "unknown device 'tpu': expected auto, cpu, cuda, cuda:N or mps"),
    (["--set", "augment=bogus"], "unknown augmentation policy 'bogus'"),
    (["--out", "x" * 300], "out has a path component of 300 bytes"),
    (["--out", os.fsdecode(b"bad-\xff-name")], "out is not valid UTF-8"),
    (["--set", "no_such_field=1"], "unknown field(s) no_such_field"),
])
def test_bad_values_are_refused_before_loading_data(tmp_path, cache, capsys, monkeypatch, args, message):
    import eanet.train.trainer

    monkeypatch.setattr(eanet.train.trainer, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    monkeypatch.chdir(tmp_path)
    base = ["train", "--dataset", "synthetic", "--recipe", "keras-example", "--epochs", "1"]
    assert message in one_line_error(capsys, [*base, *args])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_nan_is_refused_in_every_number_field():
    import dataclasses
    import typing

    from eanet.errors import EanetError
    from eanet.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    fields = [f.name for f in dataclasses.fields(TrainConfig) if "float" in str(hints[f.name])]
    assert len(fields) > 10
    for name in fields:
        value = [float("nan"), 0.9] if name == "betas" else float("nan")
        with pytest.raises(EanetError, match=f"{name} must be"):
            TrainConfig.from_dict({name: value})


def test_cuda_without_cuda_is_one_line(tmp_path, cache, capsys):
    assert "sees no CUDA GPU" in one_line_error(capsys, ["train", "--dataset", "synthetic", "--device", "cuda"])


@pytest.mark.parametrize(("args", "message"), [
    (["--batch-size", "-5"], "--batch-size"), (["--batch-size", "0"], "--batch-size"),
    (["--label-smoothing", "7"], "--label-smoothing"),
])
def test_evaluate_refuses_bad_values(finished, capsys, args, message):
    assert message in one_line_error(capsys, ["evaluate", str(finished), *args], code=2)
    assert "unknown device 'tpu'" in one_line_error(capsys, ["evaluate", str(finished), "--device", "tpu"], code=1)


# ---- damaged files

def test_config_json_that_is_not_a_model_config(finished, tmp_path, capsys):
    folder = copy_of(finished, tmp_path / "m")
    good = json.loads((folder / "config.json").read_text())
    cases = {
        "a list": ([1, 2], "must be a JSON object"),
        "unknown keys": ({**good, "colour": "red"}, "unknown model argument(s) colour"),
        "class names": ({**good, "class_names": ["a", "b"]}, "class_names has 2 names for 10 classes"),
        "absurd depth": ({**good, "depth": 10_000_000}, "depth must be in [1, 256]"),
    }
    for name, (config, message) in cases.items():
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(eanet.EanetError, match=None) as info:
            eanet.load_model(folder)
        assert message in str(info.value), name
        for command in (["predict", str(folder), str(folder / "curves.png")], ["evaluate", str(folder)],
                        ["export", str(folder), "--onnx", str(tmp_path / "x.onnx")]):
            assert message in one_line_error(capsys, command), (name, command[0])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("config.json", b"\x9e\x88\xff", "cannot read {f}: not UTF-8 text (byte 0x9e at position 0)"),
    ("config.json", b"", "cannot read {f}: an empty file"),
    ("results.json", b"\xff", "cannot read {f}: not UTF-8 text (byte 0xff at position 0)"),
    ("results.json", b"  \n", "cannot read {f}: an empty file"),
    ("metrics.csv", b"", "{f} lists no epochs: {run} is not a finished run"),
])
def test_a_damaged_run_file_is_named_by_compare(finished, tmp_path, capsys, name, content, message):
    run = copy_of(finished, tmp_path / "run")
    (run / name).write_bytes(content)
    err = one_line_error(capsys, ["compare", str(run), "--out", str(tmp_path / "cmp")])
    assert err == "error: " + message.format(f=run / name, run=run)
    assert not (tmp_path / "cmp").exists()


def test_weights_that_do_not_fit_are_named(finished, tmp_path, capsys):
    folder = copy_of(finished, tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    tensors["head.weight"] = torch.zeros(3, 3)
    save_file(tensors, folder / "model.safetensors")
    err = one_line_error(capsys, ["predict", str(folder), str(folder / "curves.png")])
    assert "head.weight has shape [3, 3] in the file, [10, 16] in the model" in err
    tensors = load_file(finished / "model.safetensors")
    tensors["head.bias"] = torch.full_like(tensors["head.bias"], float("nan"))
    save_file(tensors, folder / "model.safetensors")
    assert "head.bias holds non-finite values" in one_line_error(capsys, ["evaluate", str(folder)])


def test_resume_refuses_damaged_state_and_changes_nothing(finished, tmp_path, capsys):
    """An empty, foreign or mismatched checkpoint, or a config.yaml that is empty, a list, not YAML, or edited
    since the checkpoint: one line each, and the folder byte-identical afterwards."""
    good_config = (finished / "config.yaml").read_text()
    state = torch.load(finished / "checkpoint-last.pt", weights_only=True)
    wrong_shape = {**state, "model": {**state["model"], "head.weight": torch.zeros(2, 2)}}
    cases = [
        ("checkpoint-last.pt", b"", "cannot read checkpoint"),
        ("checkpoint-last.pt", {"model": {}}, "lacks config"),
        ("checkpoint-last.pt", wrong_shape, "does not fit this run's model and optimizer"),
        ("config.yaml", "", "an empty file"),
        ("config.yaml", "- 1\n- 2\n", "must be a mapping of field: value, got list"),
        ("config.yaml", "lr: [unclosed\n", "cannot read"),
        ("config.yaml", good_config.replace("lr: 0.001", "lr: 5.0"), "lr: 0.001 in the checkpoint, 5.0 now"),
        ("config.yaml", good_config.replace("embed_dim: 16", "embed_dim: 32"), "model_args: {"),
    ]
    for i, (name, content, message) in enumerate(cases):
        folder = copy_of(finished, tmp_path / f"run{i}")
        (folder / "results.json").unlink()  # stopped before its final evaluation: a resume would finish it
        if isinstance(content, dict):
            torch.save(content, folder / name)
        else:
            (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        before = snapshot(folder)
        assert message in one_line_error(capsys, ["train", "--resume", str(folder)]), name
        after = snapshot(folder)
        after.pop(".lock", None)
        before.pop(".lock", None)
        assert after == before, name


def test_a_killed_writers_leftovers_are_removed_and_its_lock_taken_over(finished, tmp_path, capsys):
    folder = copy_of(finished, tmp_path / "run")
    (folder / "results.json").unlink()  # stopped before its final evaluation: a resume finishes it
    (folder / ".checkpoint-last.pt.0123456789ab.tmp").write_bytes(b"torn")
    (folder / ".lock").write_text("99999999\n")  # a dead process's pid: flock is free
    main(["train", "--resume", str(folder), "--quiet"])
    assert not list(folder.glob(".*.tmp"))


def test_single_class_and_decompression_bombs_in_an_image_folder(tmp_path, cache, capsys, monkeypatch):
    one = write_image_folder(tmp_path / "one", classes=("only",), per_class=4)
    err = one_line_error(capsys, ["train", *TINY, "--dataset", "imagefolder", "--data-dir", str(one),
                                  "--out", str(tmp_path / "r1"), "--quiet"])
    assert "a classifier needs at least two" in err and not (tmp_path / "r1").exists()
    two = write_image_folder(tmp_path / "two", classes=("a", "b"), per_class=3)
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # every test image is now over twice the limit
    err = one_line_error(capsys, ["train", *TINY, "--dataset", "imagefolder", "--data-dir", str(two),
                                  "--out", str(tmp_path / "r2"), "--quiet"])
    assert "cannot read image" in err and "decompression bomb" in err.lower()


def test_undecodable_image_names_the_file(tmp_path, cache, capsys):
    folder = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3)
    bad = folder / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    err = one_line_error(capsys, ["train", *TINY, "--dataset", "imagefolder", "--data-dir", str(folder),
                                  "--out", str(tmp_path / "r"), "--quiet"])
    assert str(bad) in err


def test_nan_before_any_checkpoint_says_so(tmp_path, cache, capsys, monkeypatch):
    import eanet.train.trainer as trainer

    real = trainer.soft_cross_entropy
    monkeypatch.setattr(trainer, "soft_cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    err = one_line_error(capsys, ["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"])
    assert "no checkpoint was written yet" in err and "checkpoint-last.pt" not in err


# ---- files eanet did not write are never overwritten

def test_out_refuses_a_folder_eanet_did_not_write(tmp_path, cache, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    for name in ("README.md", "config.json", "config.yaml", "metrics.csv", "results.json"):
        (user / name).write_text(f"the user's own {name}\n")
    before = snapshot(user)
    err = one_line_error(capsys, ["train", *TINY, "--epochs", "1", "--out", str(user)])
    assert "not an eanet run folder" in err
    assert snapshot(user) == before


def test_out_refuses_a_folder_holding_a_run(finished, capsys):
    before = snapshot(finished)
    assert "--resume" in one_line_error(capsys, ["train", *TINY, "--epochs", "1", "--out", str(finished)])
    assert snapshot(finished) == before


def _outputs(finished, tmp_path):
    """Each command that writes files outside a run folder, with the file it writes."""
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (36, 30), (200, 40, 90)).save(image)
    return {
        "export": (["export", str(finished), "--onnx", str(tmp_path / "o" / "m.onnx")], tmp_path / "o" / "m.onnx"),
        "compare": (["compare", str(finished), "--out", str(tmp_path / "c")], tmp_path / "c" / "compare.md"),
        "attention": (["attention", str(finished), str(image), "--out", str(tmp_path / "a")],
                      tmp_path / "a" / "photo-attention.png"),
        "scaling": (["benchmark", "--scaling", "--tokens", "16", "--batch-size", "1", "--repeats", "1", "--warmup",
                     "0", "--out", str(tmp_path / "s" / "scaling.png")], tmp_path / "s" / "scaling.png"),
    }


@pytest.mark.parametrize("command", ["export", "compare", "attention", "scaling"])
def test_a_file_eanet_did_not_write_is_never_replaced(finished, tmp_path, capsys, command):
    args, target = _outputs(finished, tmp_path)[command]
    target.parent.mkdir()
    target.write_text("the user's own file\n")
    err = one_line_error(capsys, args)
    assert f"{target} exists and eanet did not write it" in err
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # and nothing else was written
    assert target.read_text() == "the user's own file\n"
    target.unlink()
    target.mkdir()  # a folder where the file would go
    assert f"{target} is a folder" in one_line_error(capsys, args)


@pytest.mark.parametrize("command", ["export", "compare", "attention", "scaling"])
def test_what_eanet_wrote_it_may_write_again(finished, tmp_path, capsys, command):
    from eanet.export import is_eanet_onnx
    from eanet.fileio import is_eanet_png

    args, target = _outputs(finished, tmp_path)[command]
    for _ in range(2):
        main(args)
        assert target.is_file()
        target.parent.joinpath("extra.txt").write_text("kept\n")  # the folder's other files are left alone
    if command == "export":
        assert is_eanet_onnx(target)
    else:
        assert is_eanet_png(target.with_name("compare.png") if command == "compare" else target)
    assert target.parent.joinpath("extra.txt").read_text() == "kept\n"
    capsys.readouterr()


def test_a_plot_eanet_did_not_draw_is_not_taken_for_its_own(finished, tmp_path):
    from PIL import Image

    from eanet.fileio import is_eanet_png

    assert is_eanet_png(finished / "curves.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "other.png")
    (tmp_path / "text.png").write_text("not a png")
    assert not is_eanet_png(tmp_path / "other.png") and not is_eanet_png(tmp_path / "text.png")
    assert not is_eanet_png(tmp_path / "missing.png")


def test_an_out_that_is_a_file_is_named(finished, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    for args in (["compare", str(finished)], ["attention", str(finished), str(tmp_path / "notes.txt")]):
        assert "is a file, not a folder" in one_line_error(capsys, [*args, "--out", str(tmp_path / "notes.txt")])
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_two_writers_on_one_folder(tmp_path):
    run = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "40", "--out", str(run), "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "eanet", *args], env=env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / ".eanet-run").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = run_cli(args, tmp_path)
        assert second.returncode == 1 and "being written by another eanet process" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        resumed = run_cli(["train", "--resume", str(run)], tmp_path)
        assert resumed.returncode == 1 and "being written by another eanet process" in resumed.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert len(list((run / "tensorboard").glob("events.*"))) == 1


# ---- a full disk

ENOSPC_AFTER = textwrap.dedent("""
    import errno, os, shutil, sys
    import eanet.fileio as fileio
    real, calls = fileio.os.fsync, {"n": 0}
    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > int(os.environ["FAIL_AFTER"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)
    fileio.os.fsync = fsync
    from eanet.cli import main
    main(sys.argv[1:])
""")


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet", "--set", "checkpoint_seconds=0"]
    result = subprocess.run([sys.executable, "-c", ENOSPC_AFTER, *args], env={**env(tmp_path), "FAIL_AFTER": "5"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"error: No space left on device: {run / 'checkpoint-last.pt'}"
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)  # the one written before the disk filled
    assert state["global_step"] == 3 and not list(run.glob(".*.tmp"))
    before = snapshot(run)
    resumed = subprocess.run([sys.executable, "-c", ENOSPC_AFTER, "train", "--resume", str(run)],
                             env={**env(tmp_path), "FAIL_AFTER": "0"}, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1 and resumed.stderr.startswith("error: No space left on device")
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_config_yaml_lists_what_it_trained_with(finished):
    config = yaml.safe_load((finished / "config.yaml").read_text())
    assert config["betas"] == [0.9, 0.999] and config["model_args"]["embed_dim"] == 16
