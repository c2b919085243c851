"""`eanet train`: the run folder, exact resume after SIGKILL, non-finite loss, time budget, evaluate."""

import csv
import json
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from PIL import Image
from trainhelp import TINY, env, run_cli, weights

import eanet
from eanet.cli import main
from eanet.train.checkpoint import load_checkpoint
from eanet.train.trainer import CSV_COLUMNS


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EANET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("EANET_DATA_DIR", raising=False)


def test_run_folder_has_every_file(tmp_path, cache, capsys):
    run = tmp_path / "run"
    main(["train", *TINY, "--epochs", "2", "--out", str(run), "--quiet", "--set", "tta=flip", "--set", "val_tta=none"])
    for name in ("config.yaml", "metrics.csv", "curves.png", "checkpoint-last.pt", "checkpoint-best.pt",
                 "model.safetensors", "config.json", "README.md", "results.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*tmp*")), "temporary files left behind"

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["dataset"] == "synthetic" and config["model_args"]["depth"] == 1 and config["lr"] == 0.001

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert list(rows[0]) == CSV_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        assert all(row[c] != "" for c in CSV_COLUMNS)
        assert 0 <= float(row["val_top1"]) <= float(row["val_top5"]) <= 1
        assert float(row["images_per_second"]) > 0

    with Image.open(run / "curves.png") as img:
        assert img.size[0] > 400 and img.size[1] > 200

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"epoch/train_loss", "epoch/val_top1", "test/top1"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [1, 2]

    model = eanet.load_model(run)
    assert model.class_names[:2] == ["class_0", "class_1"] and model.num_classes == 10

    # the model card's model-index holds the test metrics that `eanet evaluate` measures
    card = (run / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert {m["type"] for m in meta["model-index"][0]["results"][0]["metrics"]} == {"accuracy"}
    task = meta["model-index"][0]["results"][0]
    assert "flip test-time augmentation" in card
    assert task["task"]["type"] == "image-classification" and task["dataset"]["type"] == "synthetic"
    capsys.readouterr()
    main(["evaluate", str(run), "--json"])
    evaluated = json.loads(capsys.readouterr().out)
    assert metrics["Top-1 accuracy"] == round(100 * evaluated["top1"], 2)
    assert metrics["Top-5 accuracy"] == round(100 * evaluated["top5"], 2)
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["top1"] == evaluated["top1"] and results["test"]["loss"] == pytest.approx(
        evaluated["loss"], rel=1e-6)

    # the per-epoch validation used val_tta (none), not the test split's flip
    for tta, same in (("none", True), ("flip", False)):
        main(["evaluate", str(run), "--split", "val", "--tta", tta, "--json"])
        val = json.loads(capsys.readouterr().out)
        assert (float(rows[-1]["val_loss"]) == pytest.approx(val["loss"], rel=1e-5)) is same, tta


def test_training_learns_the_synthetic_classes(tmp_path, cache):
    run = tmp_path / "run"
    main(["train", *TINY, "--epochs", "4", "--augment", "none", "--out", str(run), "--quiet", "--lr", "3e-3"])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert json.loads((run / "results.json").read_text())["test"]["top1"] > 0.3  # chance is 0.1


def test_resume_after_sigkill_gives_the_same_weights(tmp_path):
    args = [*TINY, "--epochs", "3", "--set", "checkpoint_seconds=0", "--quiet",
            "--set", "model_args.depth=2", "--set", "model_args.embed_dim=32"]
    straight = tmp_path / "straight"
    assert run_cli(["train", *args, "--out", str(straight)], tmp_path).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "eanet", "train", *args, "--out", str(killed)],
                            env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    step = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            state = load_checkpoint(killed / "checkpoint-last.pt")
            step = state["global_step"]
        except eanet.EanetError:
            pass
        if step >= 13 and state["step_in_epoch"] > 0:  # inside the second epoch
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model.safetensors").exists()

    resumed = run_cli(["train", "--resume", str(killed), "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (straight / "metrics.csv").read_text().count("\n") == (killed / "metrics.csv").read_text().count("\n")

    # the card and results.json say how the run was trained: the command that started it, then the resume
    start = json.loads((killed / "results.json").read_text())["commands"]
    assert len(start) == 2 and start[0].startswith("eanet train ") and f"--out {killed}" in start[0]
    assert start[1] == f"eanet train --resume {killed} --quiet"
    card = (killed / "README.md").read_text()
    assert f"Command: `{start[0]}`; stopped and continued once (`{start[1]}`)." in card
    assert json.loads((straight / "results.json").read_text())["commands"] == [start[0].replace("killed", "straight")]
    assert "continued" not in (straight / "README.md").read_text()


SIX_EPOCHS = [*TINY, "--epochs", "6", "--jsonl"]


@pytest.fixture(scope="module")
def six_epochs(tmp_path_factory):
    """An uninterrupted run of SIX_EPOCHS, to compare stopped and resumed runs with."""
    root = tmp_path_factory.mktemp("six")
    assert run_cli(["train", *SIX_EPOCHS, "--out", str(root / "straight")], root).returncode == 0
    return root / "straight"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_at_the_next_step_with_a_checkpoint_there(tmp_path, six_epochs, sig):
    args, straight = SIX_EPOCHS, six_epochs
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "eanet", "train", *args, "--out", str(stopped)],
                            env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # the first epoch's line: the second epoch is under way
    assert json.loads(first)["epoch"] == 1
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    name = signal.Signals(sig).name
    line = err.strip().splitlines()[-1]
    match = re.fullmatch(rf"error: stopped by {name} (in epoch (\d+) at step (\d+) of \d+|after epoch (\d+)), "
                         rf"with a checkpoint there: continue with `eanet train --resume {re.escape(str(stopped))}`",
                         line)
    assert match, line
    state = load_checkpoint(stopped / "checkpoint-last.pt")
    if match.group(2):  # inside an epoch: the checkpoint is at that very step
        assert (state["epoch"] + 1, state["step_in_epoch"]) == (int(match.group(2)), int(match.group(3)))
    else:
        assert (state["epoch"], state["step_in_epoch"]) == (int(match.group(4)), 0)
    assert not (stopped / "model.safetensors").exists()

    resumed = run_cli(["train", "--resume", str(stopped), "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(straight), weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, cache, monkeypatch):
    import eanet.train.trainer as trainer

    calls = {"n": 0}
    real = trainer.soft_cross_entropy

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 15 else loss

    monkeypatch.setattr(trainer, "soft_cross_entropy", poisoned)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, "--epochs", "3", "--out", str(run), "--quiet", "--set", "checkpoint_seconds=0"])
    assert exit_info.value.code == 1
    state = load_checkpoint(run / "checkpoint-last.pt")
    assert state["global_step"] == 14
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / "model.safetensors").exists()


def test_time_budget_fits_the_schedule_and_ends_on_time(tmp_path, cache):
    run = tmp_path / "run"
    budget_minutes = 0.25
    start = time.perf_counter()
    main(["train", *TINY, "--epochs", "1000", "--time-budget", str(budget_minutes), "--out", str(run), "--quiet",
          "--schedule", "cosine"])
    took = time.perf_counter() - start
    state = load_checkpoint(run / "checkpoint-last.pt")
    assert state["total_steps"] < 1000 * 10  # fitted, not the recipe's 1,000 epochs
    assert took < budget_minutes * 60 * 1.25 + 5  # plus data loading and start-up
    assert state["global_step"] >= 0.8 * state["total_steps"]  # and the fitted schedule was mostly used


def test_bad_options_give_one_line_errors(tmp_path):
    result = run_cli(["train", "--recipe", "no-such-recipe"], tmp_path)
    assert result.returncode == 1 and result.stderr.strip().startswith("error: no recipe")
    assert "Traceback" not in result.stderr
    result = run_cli(["train", "--resume", str(tmp_path / "nothing-here")], tmp_path)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    result = run_cli(["train", *TINY, "--set", "no_such_field=1"], tmp_path)
    assert result.returncode == 1 and "unknown field" in result.stderr


def test_a_checkpoint_from_before_commands_were_kept_still_resumes(tmp_path, cache, capsys):
    """Checkpoints written before the run's commands were kept lack ``commands``: resuming one works, and
    the card starts from the first command known, the resume."""
    run = tmp_path / "run"
    main(["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"])
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)
    given = ["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"]  # main()'s words, not pytest's
    assert state.pop("commands") == ["eanet " + " ".join(shlex.quote(w) for w in given)]
    torch.save(state, run / "checkpoint-last.pt")
    (run / "results.json").unlink()  # stopped before its final evaluation: a resume finishes it
    main(["train", "--resume", str(run), "--quiet"])
    commands = json.loads((run / "results.json").read_text())["commands"]
    assert len(commands) == 1 and commands[0].endswith(f"--resume {run} --quiet")


def test_resuming_a_finished_run_changes_nothing_and_says_so(tmp_path, cache, capsys):
    run = tmp_path / "run"
    main(["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"])
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    main(["train", "--resume", str(run)])
    test = json.loads((run / "results.json").read_text())["test"]
    assert capsys.readouterr().err.strip() == (f"{run} is finished (test top-1 {100 * test['top1']:.2f}%, top-5 "
                                               f"{100 * test['top5']:.2f}%): nothing to continue, nothing changed")
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_resumed_run_is_shown_as_this_command_asks(tmp_path, cache):
    from eanet.cli.train import _resumed

    run = tmp_path / "run"
    main(["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"])  # saved with log: quiet
    assert _resumed(run, {}, {}, None).log == "progress"
    assert _resumed(run, {"log": "jsonl"}, {}, None).log == "jsonl"
    assert _resumed(run, {"log": "quiet"}, {}, None).log == "quiet"


# ---- fine-tuning: --init-from a saved model

def _tensors(run) -> dict:
    return eanet.load_model(run).state_dict()


def test_init_from_trains_the_saved_model_from_its_weights_with_a_new_head(tmp_path, cache, capsys):
    from fakedata import write_image_folder

    source = tmp_path / "source"
    main(["train", *TINY, "--epochs", "1", "--out", str(source), "--quiet"])  # 10 classes, a custom width
    folder = write_image_folder(tmp_path / "photos", per_class=4)  # 3 other classes
    tuned = tmp_path / "tuned"
    # a learning rate of 1e-9 moves no weight by more than ~1e-9 in one step: what it starts from shows
    main(["train", "--init-from", str(source), "--dataset", "imagefolder", "--data-dir", str(folder), "--recipe",
          "keras-example", "--batch-size", "4", "--max-steps", "1", "--lr", "1e-9", "--out", str(tuned)])
    assert f"starting from {source}: " in capsys.readouterr().err
    before, after = _tensors(source), _tensors(tuned)
    assert after["head.weight"].shape == (3, 16) and before["head.weight"].shape == (10, 16)
    for name, tensor in after.items():
        if not name.startswith("head."):
            torch.testing.assert_close(tensor, before[name], atol=1e-6, rtol=0, msg=name)  # input statistics too
    config = yaml.safe_load((tuned / "config.yaml").read_text())
    assert config["init_from"] == str(source) and config["model"] == "eanet_keras"
    assert config["model_args"] == {"depth": 1, "embed_dim": 16, "num_heads": 4, "mlp_dim": 16}
    assert f"starting from the weights of `{source}`" in (tuned / "README.md").read_text()

    # a run stopped after its training resumes without its starting point: the checkpoint holds the weights
    for name in ("results.json", "model.safetensors", "README.md"):
        (tuned / name).unlink()
    (source / "model.safetensors").unlink()
    main(["train", "--resume", str(tuned), "--quiet"])
    assert (tuned / "results.json").is_file()


def test_init_from_with_the_same_classes_keeps_the_head(tmp_path, cache):
    source, tuned = tmp_path / "source", tmp_path / "tuned"
    main(["train", *TINY, "--epochs", "1", "--out", str(source), "--quiet"])
    main(["train", "--init-from", str(source), "--dataset", "synthetic", "--recipe", "keras-example", "--max-steps",
          "1", "--lr", "1e-9", "--batch-size", "32", "--out", str(tuned), "--quiet"])
    torch.testing.assert_close(_tensors(tuned)["head.weight"], _tensors(source)["head.weight"], atol=1e-6, rtol=0)


def test_init_from_refuses_another_model_and_a_missing_source(tmp_path, cache, capsys):
    source = tmp_path / "source"
    main(["train", *TINY, "--epochs", "1", "--out", str(source), "--quiet"])
    for args, message in (
        (["--init-from", str(source), "--model", "vit_keras"],
         f"{source} holds model eanet_keras: a run started from it trains eanet_keras, not vit_keras"),
        (["--init-from", str(tmp_path / "nowhere")], f"model folder not found: {tmp_path / 'nowhere'}"),
    ):
        with pytest.raises(SystemExit):
            main(["train", "--dataset", "synthetic", *args, "--out", str(tmp_path / "x")])
        assert capsys.readouterr().err.strip().endswith(message)
        assert not (tmp_path / "x").exists()


def test_init_from_a_model_of_another_image_size_names_the_tensor(tmp_path, cache, capsys):
    eanet.create_model("eanet_keras", depth=1, img_size=48, num_classes=10).save_pretrained(tmp_path / "big")
    with pytest.raises(SystemExit):
        main(["train", "--init-from", str(tmp_path / "big"), "--dataset", "synthetic", "--recipe", "keras-example",
              "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot start from {tmp_path / 'big'}: pos_embed")
    assert "(a different image size" in err
    assert not (tmp_path / "x").exists()
