"""``eanet train``: a recipe, overridden field by field from the command line."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
import yaml

from eanet.errors import EanetError
from eanet.train.config import TrainConfig, list_recipes, resolve_config

# fields that a resumed run may change: where and how it runs, never what it computes
RESUMABLE_OVERRIDES = {"device", "log", "threads", "data_dir"}


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


@click.command("train")
@click.option("--recipe", help=f"recipe name or YAML path (default cifar100-fast); known: {', '.join(list_recipes())}")
@click.option("--model", help="registered model name (eanet models)")
@click.option("--dataset", help="cifar100, cifar10, imagefolder or synthetic")
@click.option("--data-dir", help="where the dataset is (else $EANET_DATA_DIR, else the user cache)")
@click.option("--val-fraction", type=float, help="last fraction of the training set held out (0: none)")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float, help="peak learning rate")
@click.option("--weight-decay", type=float)
@click.option("--schedule", type=click.Choice(["constant", "cosine"]))
@click.option("--warmup-epochs", type=float)
@click.option("--augment", help="augmentation policy (keras, flip-crop, trivialaugment, randaugment, none)")
@click.option("--ema-decay", type=float, help="keep an EMA of the weights with this decay")
@click.option("--grad-clip", type=float, help="clip the global gradient norm")
@click.option("--max-steps", type=int, help="stop after this many optimizer steps")
@click.option("--time-budget", type=float, help="minutes: fit the schedule to this wall-clock budget")
@click.option("--seed", type=int)
@click.option("--device", help="auto, cpu, cuda, cuda:N")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]))
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model")
@click.option("--threads", type=int, help="CPU threads")
@click.option("--out", help="run folder (default runs/<recipe>-<model>-s<seed>)")
@click.option("--resume", type=click.Path(path_type=Path), help="continue the run in this folder")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override any recipe field")
@click.option("--quiet", "log", flag_value="quiet", default=None, help="print nothing but errors")
@click.option("--jsonl", "log", flag_value="jsonl", help="one JSON object per epoch on stdout")
def train_cmd(recipe, resume, sets, compile_, **options) -> None:
    """Train a model; the run folder gets metrics, curves, checkpoints, the model and its card."""
    from eanet.train.trainer import train

    overrides = {k: v for k, v in options.items() if v is not None}
    sets = _parse_sets(sets)
    if compile_ is not None:
        overrides["compile"] = compile_
    if resume is not None:
        config_file = resume / "config.yaml"
        if not config_file.is_file():
            raise EanetError(f"{resume} is not a run folder (no config.yaml)")
        refused = sorted((set(overrides) | set(sets)) - RESUMABLE_OVERRIDES) + (["--recipe"] if recipe else [])
        if refused:
            raise EanetError(f"--resume continues a run with its saved configuration; "
                             f"cannot change {', '.join(refused)}")
        cfg = TrainConfig.from_dict({**yaml.safe_load(config_file.read_text()), **overrides, **sets},
                                    source=str(config_file))
    else:
        cfg = resolve_config(recipe, sets=sets, **overrides)
    train(cfg, resume=resume, command=" ".join(["eanet"] + [shlex.quote(a) for a in sys.argv[1:]]))
