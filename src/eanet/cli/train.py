"""``eanet train``: a recipe, overridden field by field from the command line.

Precedence: a flag or ``--set`` wins over the recipe, and means what it says. ``--model M`` builds M as
registered (the recipe's ``model_args`` belong to the recipe's own model; ``--set model_args.x=...``
still applies); ``--epochs N`` without ``--time-budget`` trains N epochs (the recipe's budget is dropped).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
import yaml

from eanet.cli import summary
from eanet.errors import EanetError
from eanet.run_folder import RunFolder
from eanet.train.checkpoint import RESUMABLE_FIELDS
from eanet.train.config import TrainConfig, list_recipes, load_recipe, resolve_config


def _parse_sets(pairs: tuple[str, ...]) -> dict:
    """``--set key=value`` pairs (YAML values); ``model_args.depth=4`` sets one model argument,
    ``augment_args.padding=2`` one augmentation parameter."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise EanetError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise EanetError(f"--set {key}: cannot parse value {raw!r}") from None
        group, dot, sub = key.partition(".")
        if dot and group in ("model_args", "augment_args"):
            out.setdefault(group, {})[sub] = value
        else:
            out[key.replace("-", "_")] = value
    return out


def _configure(recipe: str | None, options: dict, sets: dict) -> TrainConfig:
    """The run's configuration: the recipe, then the flags and ``--set`` values, by the precedence rule."""
    base = load_recipe(recipe or "cifar100-fast")
    if options.get("model") is not None and options["model"] != base.get("model"):
        base.pop("model_args", None)  # the recipe's model arguments are for its own model
    if options.get("epochs") is not None and options.get("time_budget") is None and "time_budget" not in sets:
        base.pop("time_budget", None)
        if base.get("warmup_fraction"):  # a budget recipe's warmup share, now of the epochs asked for
            base["warmup_epochs"] = base.pop("warmup_fraction") * options["epochs"]
    return resolve_config(base, sets=sets, **options)


def _resumed(run: Path, options: dict, sets: dict, recipe: str | None) -> TrainConfig:
    """The saved configuration of the run in ``run``, with the flags that equal it accepted, the ones a
    resumed run may change applied, and any other change refused by name."""
    folder = RunFolder(run)
    saved = TrainConfig.from_dict(folder.read_config(), source=str(folder.config_yaml))
    current = saved.to_dict()
    requested = dict(options)
    for key, value in sets.items():
        if key in ("model_args", "augment_args") and isinstance(value, dict):
            value = {**current.get(key, {}), **value}
        requested[key] = value
    if recipe is not None:
        requested["recipe"] = load_recipe(recipe)["recipe"]
    if "out" in requested and Path(requested["out"]).resolve() == run.resolve():
        requested.pop("out")
    differ = [k for k, v in requested.items()
              if k not in RESUMABLE_FIELDS and k in current and not _equal(current[k], v)]
    unknown = sorted(k for k in requested if k not in current)
    if unknown:
        raise EanetError(f"unknown field(s) {', '.join(unknown)}")
    if differ:
        raise EanetError("--resume continues a run with its saved configuration; cannot change " + "; ".join(
            f"{k} (saved {current[k]!r}, requested {requested[k]!r})" for k in differ))
    changes = {k: v for k, v in requested.items() if k in RESUMABLE_FIELDS}
    changes["log"] = requested.get("log") or "progress"  # how this command shows the run, not how the last one did
    return TrainConfig.from_dict({**current, **changes}, source=str(folder.config_yaml))


def _equal(saved, requested) -> bool:
    if isinstance(saved, (list, tuple)) and isinstance(requested, (list, tuple)):
        return len(saved) == len(requested) and all(_equal(a, b) for a, b in zip(saved, requested, strict=True))
    if isinstance(saved, float) or isinstance(requested, float):
        try:
            return float(saved) == float(requested)
        except (TypeError, ValueError):
            return False
    return saved == requested


@click.command("train", short_help=summary("train"))
@click.option("--recipe", help=f"recipe name or YAML path (default cifar100-fast); known: {', '.join(list_recipes())}")
@click.option("--model", help="registered model name (eanet models), built as registered: the recipe's "
              "model_args apply only to the recipe's own model")
@click.option("--init-from", help="fine-tune: start from this saved model's weights (a folder, run or Hub id "
              "user/name) and train its architecture; a new head unless the classes are the same")
@click.option("--dataset", help="cifar100, cifar10, imagefolder or synthetic")
@click.option("--data-dir", help="where the dataset is (else $EANET_DATA_DIR, else the user cache)")
@click.option("--val-fraction", type=float, help="last fraction of the training set held out (0: none)")
@click.option("--epochs", type=int, help="train this many epochs; without --time-budget the recipe's time budget "
              "is dropped, with it the budget fits the schedule and this is the most it may train")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float, help="peak learning rate")
@click.option("--weight-decay", type=float)
@click.option("--schedule", type=click.Choice(["constant", "cosine"]))
@click.option("--warmup-epochs", type=float)
@click.option("--augment", help="augmentation policy (keras, flip-crop, trivialaugment, randaugment, none)")
@click.option("--ema-decay", type=float, help="keep an EMA of the weights with this decay")
@click.option("--grad-clip", type=float, help="clip the global gradient norm to this (> 0)")
@click.option("--max-steps", type=int, help="stop after this many optimizer steps")
@click.option("--time-budget", type=float, help="minutes: fit the schedule to this wall-clock budget (capped by "
              "--epochs when both are given)")
@click.option("--seed", type=int)
@click.option("--device", help="auto, cpu, cuda, cuda:N")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]))
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model")
@click.option("--threads", type=int, help="CPU threads")
@click.option("--out", help="run folder (default runs/<recipe>-<model>-s<seed>); a new or empty folder")
@click.option("--resume", type=click.Path(path_type=Path), help="continue the run in this folder (flags equal to "
              "its saved values are accepted; --device, --threads, --data-dir and the log mode may change)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override any recipe field")
@click.option("--print-config", is_flag=True, help="print the resolved configuration (YAML) and exit")
@click.option("--quiet", "log", flag_value="quiet", default=None, help="print nothing but errors")
@click.option("--jsonl", "log", flag_value="jsonl", help="one JSON object per epoch on stdout")
def train_cmd(recipe, resume, sets, compile_, print_config, **options) -> None:
    """Train a model; the run folder gets metrics, curves, checkpoints, the model and its card.

    Flags and --set win over the recipe: --model M builds M as registered, --epochs N trains N epochs.
    """
    from eanet.train.trainer import train

    options = {k: v for k, v in options.items() if v is not None}
    sets = _parse_sets(sets)
    if compile_ is not None:
        options["compile"] = compile_
    cfg = _resumed(resume, options, sets, recipe) if resume is not None else _configure(recipe, options, sets)
    if print_config:
        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
        return
    from eanet.cli.progress import ConsoleReport

    report = ConsoleReport(cfg.log)
    words = (click.get_current_context().obj or {}).get("argv", sys.argv[1:])
    try:
        train(cfg, resume=resume, command=" ".join(["eanet"] + [shlex.quote(a) for a in words]), report=report,
              progress=report.bars)
    finally:
        report.close()
