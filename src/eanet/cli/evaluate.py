"""``eanet evaluate``: loss, top-1 and top-5 of a run or saved model, and accuracy per coarse class."""

from __future__ import annotations

import json
from pathlib import Path

import click

from eanet.cli import summary
from eanet.errors import EanetError
from eanet.evaluate import TTA_MODES


def evaluate_dir(path: Path, *, split: str = "test", dataset: str | None = None, data_dir: str | None = None,
                 label_smoothing: float | None = None, batch_size: int = 500, device: str = "cpu",
                 tta: str | None = None) -> dict:
    """Evaluate the model in ``path`` (a run folder or a ``save_pretrained`` folder) on a split.

    A run folder's ``config.yaml`` supplies the dataset, validation fraction and label smoothing
    (so the loss matches training's) and test-time augmentation; explicit arguments win.
    """
    from eanet.data import load_dataset
    from eanet.evaluate import evaluate
    from eanet.hub import load_model
    from eanet.run_folder import RunFolder
    from eanet.train.config import TrainConfig

    run_cfg = {}
    folder = RunFolder(path)
    if folder.config_yaml.is_file():
        run_cfg = TrainConfig.from_dict(folder.read_config(), source=str(folder.config_yaml)).to_dict()
    model = load_model(path, map_location=device)
    ds = load_dataset(dataset or run_cfg.get("dataset", "cifar100"), data_dir=data_dir or run_cfg.get("data_dir"),
                      val_fraction=run_cfg.get("val_fraction", 0.2), progress=False)
    subset = ds.test if split == "test" else ds.val
    if subset is None:
        raise EanetError("this run trained on the whole training set: it has no validation split")
    if model.num_classes != ds.num_classes:
        raise EanetError(f"the model has {model.num_classes} classes but {ds.name} has {ds.num_classes}")
    smoothing = label_smoothing if label_smoothing is not None else run_cfg.get("label_smoothing", 0.0)
    result = evaluate(model, subset.images, subset.labels, batch_size=batch_size, device=device,
                      precision=run_cfg.get("precision", "fp32"), label_smoothing=smoothing,
                      coarse_labels=subset.coarse_labels, coarse_names=ds.coarse_classes,
                      tta=tta or run_cfg.get("tta", "none"))
    return {"split": split, "dataset": ds.name, **result}


@click.command("evaluate", short_help=summary("evaluate"))
@click.argument("path")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--dataset", help="dataset (default: the run's, else cifar100)")
@click.option("--data-dir", help="where the dataset is")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True),
              help="in the loss (default: the run's, else 0)")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--tta", type=click.Choice(TTA_MODES),
              help="test-time augmentation (default: the run's)")
@click.option("--device", default="auto", show_default=True, help="auto (the GPU when there is one), cpu, cuda, cuda:N")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--revision", help="with a Hub repository id: the branch, tag or commit")
def evaluate_cmd(path, split, dataset, data_dir, label_smoothing, batch_size, tta, device, as_json, revision) -> None:
    """Evaluate a run folder, saved model or Hub repository (user/name): loss, top-1, top-5, top-1 per coarse
    class."""
    from eanet.devices import resolve_device
    from eanet.hub import resolve_model

    result = evaluate_dir(resolve_model(path, revision=revision), split=split, dataset=dataset, data_dir=data_dir,
                          label_smoothing=label_smoothing, batch_size=batch_size, device=str(resolve_device(device)),
                          tta=tta)
    if as_json:
        click.echo(json.dumps(result))
        return
    name = "Test" if split == "test" else "Validation"
    click.echo(f"{name} loss: {result['loss']:.2f}")
    click.echo(f"{name} accuracy: {100 * result['top1']:.2f}%")
    click.echo(f"{name} top 5 accuracy: {100 * result['top5']:.2f}%")
    if result.get("per_coarse"):
        click.echo("\ntop-1 by coarse class:")
        for coarse, acc in sorted(result["per_coarse"].items(), key=lambda kv: -kv[1]):
            click.echo(f"  {coarse:<32} {100 * acc:6.2f}%")
