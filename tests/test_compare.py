"""`eanet compare`: EANet and ViT trained under identical settings, one table, one overlay plot."""

import json
import shutil
import statistics

import pytest
from PIL import Image
from trainhelp import TINY, run_cli

from eanet.cli import main


def test_compare_trains_both_models_and_tabulates(tmp_path):
    out = tmp_path / "cmp"
    tiny = [a for a in TINY if a not in ("--recipe", "keras-example", "--threads", "1")]
    result = run_cli(["compare", "--models", "eanet_keras,vit_keras", *tiny, "--epochs", "2", "--out", str(out),
                      "--quiet"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "compare.json").read_text())["runs"]
    # TINY shrinks both models (depth 1, width 16): the rows say so instead of borrowing the registered names
    assert [r["model"] for r in rows] == ["eanet_keras-custom", "vit_keras-custom"]
    assert [r["attention"] for r in rows] == ["external", "self"]
    for r in rows:
        assert r["parameters"] > 0 and r["macs_per_image"] > 0 and r["epochs"] == 2
        assert r["train_images_per_second"] > 0 and r["inference_images_per_second"] > 0
        assert 0 <= r["test_top1"] <= r["test_top5"] <= 1
    table = (out / "compare.md").read_text()
    assert "| eanet_keras-custom | external |" in table and "| vit_keras-custom | self |" in table
    assert table.strip() in result.stdout
    with Image.open(out / "compare.png") as img:
        assert img.size[0] > 400

    # the same table from the finished runs, without training again
    again = run_cli(["compare", str(out / "eanet_keras"), str(out / "vit_keras"), "--out", str(tmp_path / "again")],
                    tmp_path)
    assert again.returncode == 0, again.stderr
    first = [{k: v for k, v in r.items() if k != "run"} for r in rows]
    second = [{k: v for k, v in r.items() if k != "run"} for r in json.loads((tmp_path / "again" / "compare.json")
                                                                             .read_text())["runs"]]
    assert first == second
    assert json.loads((out / "compare.json").read_text())["seed_groups"] == []  # two settings, no repeats

    # published results folders carry no weights: the architecture comes from config.yaml, checked against the
    # parameter count results.json records
    published = []
    for name in ("eanet_keras", "vit_keras"):
        published.append(tmp_path / "published" / name)
        shutil.copytree(out / name, published[-1],
                        ignore=shutil.ignore_patterns("*.safetensors", "config.json", "checkpoint*", "tensorboard"))
    third = run_cli(["compare", *map(str, published), "--out", str(tmp_path / "third")], tmp_path)
    assert third.returncode == 0, third.stderr
    assert [{k: v for k, v in r.items() if k != "run"} for r in json.loads((tmp_path / "third" / "compare.json")
                                                                           .read_text())["runs"]] == first
    config = published[1] / "config.yaml"
    config.write_text(config.read_text().replace("depth: 1", "depth: 2"))
    wrong = run_cli(["compare", *map(str, published), "--out", str(tmp_path / "fourth")], tmp_path)
    assert wrong.returncode == 1 and "config.yaml describes a model of" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_the_same_compare_again_continues_what_it_started(tmp_path):
    out = tmp_path / "cmp"
    tiny = [a for a in TINY if a not in ("--recipe", "keras-example", "--threads", "1")]
    command = ["compare", "--models", "eanet_keras,vit_keras", *tiny, "--epochs", "1", "--out", str(out), "--quiet"]
    assert run_cli(command, tmp_path).returncode == 0
    first = json.loads((out / "compare.json").read_text())["runs"]
    eanet_run = {p.name: p.read_bytes() for p in (out / "eanet_keras").iterdir() if p.is_file()}

    # the ViT's run stopped after its last epoch, before its final evaluation: only that part runs again
    for name in ("results.json", "model.safetensors", "README.md"):
        (out / "vit_keras" / name).unlink()
    again = run_cli(command, tmp_path)
    assert again.returncode == 0, again.stderr
    assert (out / "vit_keras" / "results.json").is_file()
    assert {p.name: p.read_bytes() for p in (out / "eanet_keras").iterdir() if p.is_file()} == eanet_run  # reused
    second = json.loads((out / "compare.json").read_text())["runs"]
    assert [(r["model"], r["test_top1"], r["epochs"]) for r in second] == \
        [(r["model"], r["test_top1"], r["epochs"]) for r in first]

    other = run_cli([*command[:-3], "--epochs", "2", "--out", str(out)], tmp_path)  # not what these runs were
    assert other.returncode == 1 and "cannot change epochs (saved 1, requested 2)" in other.stderr


def test_compare_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "half").mkdir()
    result = run_cli(["compare", str(tmp_path / "half")], tmp_path)
    assert result.returncode == 1 and "not a finished run" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_summarises_repeats_of_one_setting_over_seeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EANET_CACHE_DIR", str(tmp_path / "cache"))
    runs = []
    for seed in (0, 1, 2):
        runs.append(tmp_path / f"s{seed}")
        main(["train", *TINY, "--epochs", "1", "--seed", str(seed), "--out", str(runs[-1]), "--quiet"])
    main(["train", *TINY, "--epochs", "1", "--lr", "3e-3", "--out", str(tmp_path / "other"), "--quiet"])
    capsys.readouterr()
    main(["compare", *map(str, runs), str(tmp_path / "other"), "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())["seed_groups"]
    assert len(summary) == 1 and summary[0]["seeds"] == [0, 1, 2]  # the lr=3e-3 run is another setting
    top1 = [100 * json.loads((r / "results.json").read_text())["test"]["top1"] for r in runs]
    assert summary[0]["test_top1_mean"] == pytest.approx(statistics.mean(top1))
    assert summary[0]["test_top1_std"] == pytest.approx(statistics.stdev(top1))
    assert f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f}%" in out
