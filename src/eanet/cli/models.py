"""``eanet models``, ``eanet summary NAME`` and ``eanet import-keras``."""

from __future__ import annotations

from pathlib import Path

import click

from eanet.cli import summary
from eanet.errors import EanetError
from eanet.models import create_model, list_models, model_spec
from eanet.models.inspect import count_macs, count_parameters, layer_table


def _create(name: str):
    return create_model(name)


def _model_or_folder(name: str):
    """A registered name, or a folder holding a saved model (a run folder, a ``save_pretrained`` folder)."""
    if name in list_models() or not Path(name).exists():
        return _create(name)
    from eanet.hub import load_model

    return load_model(name)


@click.command("models", short_help=summary("models"))
@click.argument("pattern", default="*")
def models_cmd(pattern: str) -> None:
    """List the registered models with parameters and multiply-adds per 32x32 image."""
    names = list_models(pattern)
    if not names:
        raise EanetError(f"no registered model matches {pattern!r}")
    click.echo(f"{'model':<16} {'params':>10} {'MACs/image':>12}  description")
    for name in names:
        model = _create(name)
        click.echo(f"{name:<16} {count_parameters(model):>10,} {count_macs(model) / 1e6:>10.1f} M  "
                   f"{model_spec(name).description}")


@click.command("summary", short_help=summary("summary"))
@click.argument("name")
def summary_cmd(name: str) -> None:
    """Print the layer table of model NAME, or of the model saved in a folder (a run folder included)."""
    model = _model_or_folder(name)
    click.echo(f"model: {getattr(model, 'variant', None) or 'custom'}")
    rows = layer_table(model)
    width = max(len(r[0]) for r in rows)
    click.echo(f"{'layer':<{width}}  {'type':<18} {'output shape':<18} {'params':>9}")
    for layer, kind, shape, params in rows:
        click.echo(f"{layer:<{width}}  {kind:<18} {str(list(shape)):<18} {params:>9,}")
    click.echo(f"trainable parameters: {count_parameters(model):,}   "
               f"multiply-adds per image: {count_macs(model):,}")


def _check_model_out(out: Path) -> None:
    """``--out`` for a saved model: new, empty, or a model folder eanet wrote (only its two files in it)."""
    if out.exists() and not out.is_dir():
        raise EanetError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    names = {p.name for p in out.iterdir()}
    ours = names <= {"config.json", "model.safetensors"}
    if ours and "config.json" in names:
        from eanet.hub import read_config

        try:
            ours = "architecture" in read_config(out)
        except EanetError:
            ours = False
    if not ours:
        raise EanetError(f"{out} is not empty and is not a model folder eanet wrote: eanet does not write into "
                         "it; give --out a new or empty folder")


@click.command("import-keras", short_help=summary("import-keras"))
@click.argument("weights", type=click.Path(path_type=Path))
@click.option("--model", "model_name", type=click.Choice(["eanet_keras", "vit_keras"]), default="eanet_keras",
              show_default=True, help="which of the Keras example's models the weights belong to")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder to save the model in")
def import_keras_cmd(weights: Path, model_name: str, out: Path) -> None:
    """Import weights saved by the Keras example's Keras code (.weights.h5 or .keras) into a saved model."""
    from eanet.extras import require
    from eanet.hub import save_model

    require("h5py", extra="keras", what="eanet import-keras")
    from eanet.keras_import import import_keras

    if not weights.is_file():
        raise EanetError(f"no such file: {weights}")
    _check_model_out(out)
    model = import_keras(weights, model=model_name)
    save_model(model, out)
    click.echo(f"imported {weights} as {model_name} ({count_parameters(model):,} parameters) -> {out}")
