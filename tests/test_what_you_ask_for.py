"""What you ask for is what you get: flags over recipes, variant names everywhere a run names its model,
cards that tell the truth, a forgiving resume, no trace of a failed start, and files that honour the umask."""

import json
import os
import stat
import subprocess
import sys

import pytest
import yaml
from fakedata import write_image_folder
from trainhelp import TINY, env, run_cli

import eanet
from eanet.cli import main
from eanet.models.inspect import count_parameters

KERAS_EXAMPLE_PARAMS = 361_380  # with its 100-class head: 64 * 100 + 100 of them


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EANET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("EANET_DATA_DIR", raising=False)


def _error(capsys, args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_model_flag_builds_the_registered_model_and_epochs_trains_that_many(tmp_path, cache, capsys):
    """`--model eanet_keras --epochs 1` on the default (time-budget, conv-stem) recipe: the Keras example's
    network, one epoch, no budget."""
    folder = write_image_folder(tmp_path / "images", classes=("ant", "bee", "cow"), per_class=5)
    run = tmp_path / "run"
    main(["train", "--model", "eanet_keras", "--epochs", "1", "--dataset", "imagefolder", "--data-dir",
          str(folder), "--out", str(run), "--quiet", "--threads", "1"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "eanet_keras" and config["model_args"] == {}
    assert config["epochs"] == 1 and config["time_budget"] is None
    model = eanet.load_model(run)
    head = 64 * 3 + 3  # three classes in the folder instead of CIFAR-100's hundred
    assert count_parameters(model) == KERAS_EXAMPLE_PARAMS - (64 * 100 + 100) + head
    assert model.variant == "eanet_keras" and model.stem.__class__.__name__ == "PatchEmbed"
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 1 and results["model"] == "eanet_keras"
    assert (run / "metrics.csv").read_text().count("\n") == 2  # header + one epoch


def test_print_config_shows_the_resolved_configuration_without_loading_data(tmp_path, capsys, monkeypatch):
    import eanet.train.trainer

    monkeypatch.setattr(eanet.train.trainer, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    main(["train", "--epochs", "3", "--print-config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"] == "eanet_conv_small" and config["epochs"] == 3 and config["time_budget"] is None
    assert config["warmup_epochs"] == pytest.approx(3 / 16) and config["warmup_fraction"] == 0
    main(["train", "--epochs", "3", "--time-budget", "5", "--print-config"])  # both: the budget, capped at 3
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["epochs"] == 3 and config["time_budget"] == 5
    main(["train", "--model", "vit_keras", "--set", "model_args.depth=2", "--print-config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"] == "vit_keras" and config["model_args"] == {"depth": 2}  # not the recipe's
    main(["train", "--recipe", "cifar100-30min", "--print-config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"] == "eanet_conv_medium" and config["epochs"] is None and config["time_budget"] == 30
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """The default recipe's model, named by the default run folder, trained for a few steps."""
    root = tmp_path_factory.mktemp("budget")
    args = ["train", "--dataset", "synthetic", "--epochs", "1", "--max-steps", "3", "--batch-size", "32",
            "--threads", "1", "--quiet", "--set", "eval_batch_size=250"]
    result = subprocess.run([sys.executable, "-m", "eanet", *args], cwd=root, env=env(root), capture_output=True,
                            text=True, timeout=600, preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    return root / "runs" / "cifar100-fast-eanet_conv_small-s0"


def test_a_budget_run_is_named_by_its_variant_everywhere(budget_run, capsys):
    assert budget_run.is_dir()
    config = json.loads((budget_run / "config.json").read_text())
    assert config["variant"] == "eanet_conv_small" and config["architecture"] == "EANet"
    assert json.loads((budget_run / "results.json").read_text())["model"] == "eanet_conv_small"
    assert "`eanet_conv_small` (budget model" in (budget_run / "README.md").read_text()
    model = eanet.load_model(budget_run)
    assert model.variant == "eanet_conv_small" and count_parameters(model) == 669_188 - 90 * 129  # 10 classes
    main(["summary", str(budget_run)])
    assert capsys.readouterr().out.startswith("model: eanet_conv_small\n")


def test_the_card_says_what_ran(budget_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(budget_run / "README.md")
    results = card.data.eval_results
    assert [(r.metric_type, r.metric_name) for r in results] == [("accuracy", "Top-1 accuracy"),
                                                                 ("accuracy", "Top-5 accuracy")]
    assert {r.dataset_name for r in results} == {"synthetic random images (a test dataset)"}
    assert "arxiv:2105.02358" in card.data.tags and "arxiv.org/abs/2105.02358" in card.text
    assert "1 epoch (3 optimizer steps)" in card.text
    assert "## Limitations" in card.text and "32x32" in card.text and "class_0" in card.text
    assert "`epochs` | `1`" in card.text
    command, _, rest = card.text.partition("\n| setting | value |")
    assert str(budget_run.parent.parent) not in rest  # no local paths in the settings


def test_files_honour_the_umask(budget_run):
    for path in [budget_run, *budget_run.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path.name, oct(mode))


def test_resume_accepts_flags_equal_to_the_saved_ones(tmp_path, cache, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"]
    main(args)
    main([*args, "--resume", str(run), "--print-config"])  # the same command with --resume: accepted
    assert yaml.safe_load(capsys.readouterr().out)["epochs"] == 1
    main(["train", "--resume", str(run), "--threads", "2", "--print-config"])  # how it runs may change
    assert yaml.safe_load(capsys.readouterr().out)["threads"] == 2
    err = _error(capsys, [*args, "--resume", str(run), "--lr", "0.5", "--seed", "3"])
    assert "lr (saved 0.001, requested 0.5)" in err and "seed (saved 0, requested 3)" in err
    err = _error(capsys, ["train", "--resume", str(run), "--recipe", "cifar100-fast"])
    assert "recipe (saved 'keras-example', requested 'cifar100-fast')" in err


@pytest.mark.parametrize("args", [
    ["--dataset", "imagefolder", "--data-dir", "{tmp}/no-such-folder"],
    ["--dataset", "nonsense"],
    ["--dataset", "synthetic", "--set", "model_args.bogus=1"],
])
def test_a_failed_start_leaves_nothing_behind(tmp_path, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (new, empty):
        result = run_cli(["train", *args, "--out", str(out)], tmp_path)
        assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert not new.exists() and list(empty.iterdir()) == []
    result = subprocess.run([sys.executable, "-m", "eanet", "train", *args], cwd=tmp_path, env=env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and not (tmp_path / "runs").exists()  # the default run folder too


@pytest.mark.parametrize("group", [[], ["data"]])
def test_every_command_is_listed_with_a_whole_summary(capsys, group):
    from eanet.cli import COMMANDS

    main([*group, "--help"])
    listing = capsys.readouterr().out.split("Commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in listing if line.startswith("  ") and not line.startswith("   ")]
    assert names == (sorted(COMMANDS) if not group else ["check", "download"])
    assert not any(line.rstrip().endswith("...") for line in listing), listing  # no summary cut short
    if not group:  # each line is the command's own short help (the listing is written without loading them)
        from eanet.cli import cli

        own = {name: " ".join(cli.get_command(None, name).get_short_help_str(200).split()) for name in names}
        assert [" ".join(line.split()[1:]) for line in listing if line.strip()] == [own[n] for n in names]
