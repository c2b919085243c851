"""``eanet compare``: EANet against ViT under identical settings, as one table and one plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import click

from eanet.cli import summary
from eanet.errors import EanetError
from eanet.fileio import atomic_write_text, check_overwrite
from eanet.run_folder import RunFolder

MARKER = ".eanet-compare"  # in a folder eanet wrote a comparison into: its compare.* files may be replaced
OUTPUTS = ("compare.md", "compare.json", "compare.png")


def check_out(out: Path) -> None:
    """``--out`` must be a folder whose compare.* files, if any, eanet wrote (it holds :data:`MARKER`)."""
    if out.exists() and not out.is_dir():
        raise EanetError(f"--out {out} is a file, not a folder")
    for name in OUTPUTS:
        check_overwrite(out / name, lambda _: (out / MARKER).is_file(), hint="give --out another folder")


def read_run(run_dir: Path) -> dict:
    """The comparison row of a finished run folder."""
    from eanet.hub import load_model
    from eanet.models.inspect import count_macs, count_parameters

    folder = RunFolder(run_dir)
    results = folder.read_results()
    config = folder.read_config()
    history = folder.read_history()
    if not history:
        raise EanetError(f"{folder.metrics_csv} lists no epochs: {run_dir} is not a finished run")
    if (run_dir / "model.safetensors").is_file():
        model = load_model(run_dir)
    else:
        model = architecture_of(folder, config, results)
    return {
        "run": str(run_dir), "model": model.variant or f"{config.get('model')}-custom", "attention": model.attention,
        "parameters": count_parameters(model), "macs_per_image": count_macs(model),
        "train_images_per_second": statistics.median(r["images_per_second"] for r in history),
        "inference_images_per_second": results["test"].get("images_per_second"),
        "test_top1": results["test"]["top1"], "test_top5": results["test"]["top5"],
        "best_val_top1": max((r["val_top1"] for r in history if r.get("val_top1") is not None), default=None),
        "epochs": len(history), "seed": config.get("seed"), "history": history,
        "setting": {k: v for k, v in config.items() if k not in RUN_ONLY_FIELDS},
    }


# the classes and image size a model trained on a named dataset has: enough to rebuild its architecture
# (``synthetic`` as ``eanet train`` makes it); an image folder's classes are known only from the weights
DATASET_SHAPES = {"cifar100": (100, 32), "cifar10": (10, 32), "synthetic": (10, 32)}


def architecture_of(folder: RunFolder, config: dict, results: dict):
    """The architecture a folder without weights (a published results folder) describes, from its config.yaml:
    parameters and multiply-adds need no weights. Its parameter count must equal the one results.json records."""
    from eanet.models import create_model
    from eanet.models.inspect import count_parameters

    shape = DATASET_SHAPES.get(config.get("dataset"))
    if shape is None:
        raise EanetError(f"{folder.path} has no model.safetensors, and its architecture on dataset "
                         f"{config.get('dataset')!r} cannot be rebuilt without it")
    num_classes, img_size = shape
    model = create_model(config.get("model"), num_classes=num_classes, img_size=img_size,
                         **(config.get("model_args") or {}))
    counted = count_parameters(model)
    if results.get("parameters") not in (None, counted):
        raise EanetError(f"{folder.path}: config.yaml describes a model of {counted:,} parameters, results.json "
                         f"one of {results['parameters']:,}")
    return model


# config fields that say where and how a run ran, not what it trained: runs that differ only in these
# (and in the random seed) are repeats of one setting
RUN_ONLY_FIELDS = ("seed", "out", "log", "device", "threads", "data_dir", "checkpoint_seconds", "eval_batch_size")


def seed_groups(rows: list[dict]) -> list[dict]:
    """Runs of one setting with different seeds, as mean and sample standard deviation of the test metrics."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps(r["setting"], sort_keys=True, default=str), []).append(r)
    summary = []
    for members in groups.values():
        if len(members) < 2:
            continue
        top1 = [100 * m["test_top1"] for m in members]
        top5 = [100 * m["test_top5"] for m in members]
        summary.append({"model": members[0]["model"], "attention": members[0]["attention"],
                        "recipe": members[0]["setting"].get("recipe"), "seeds": [m["seed"] for m in members],
                        "test_top1_mean": statistics.mean(top1), "test_top1_std": statistics.stdev(top1),
                        "test_top5_mean": statistics.mean(top5), "test_top5_std": statistics.stdev(top5)})
    return summary


def seed_table(groups: list[dict]) -> str:
    lines = ["| model | attention | recipe | seeds | test top-1 (mean ± std) | test top-5 (mean ± std) |",
             "|---|---|---|---|---:|---:|"]
    for g in groups:
        lines.append(f"| {g['model']} | {g['attention']} | {g['recipe']} | {', '.join(map(str, g['seeds']))} | "
                     f"{g['test_top1_mean']:.2f} ± {g['test_top1_std']:.2f}% | "
                     f"{g['test_top5_mean']:.2f} ± {g['test_top5_std']:.2f}% |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| model | attention | params | MACs/image | train img/s | inference img/s | test top-1 | test top-5 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        infer = r["inference_images_per_second"]
        lines.append(f"| {r['model']} | {r['attention']} | {r['parameters']:,} | {r['macs_per_image'] / 1e6:.1f} M | "
                     f"{r['train_images_per_second']:.0f} | {infer:.0f} | "
                     f"{100 * r['test_top1']:.2f}% | {100 * r['test_top5']:.2f}% |")
    return "\n".join(lines)


@click.command("compare", context_settings={"ignore_unknown_options": False},
               short_help=summary("compare"))
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--models", default="eanet_keras,vit_keras", show_default=True,
              help="models to train under identical settings (when no RUNS are given)")
@click.option("--recipe", help="recipe both models train with (default: keras-example)")
@click.option("--epochs", type=int)
@click.option("--max-steps", type=int)
@click.option("--time-budget", type=float, help="minutes per model")
@click.option("--batch-size", type=int)
@click.option("--dataset")
@click.option("--data-dir")
@click.option("--seed", type=int)
@click.option("--device")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override any recipe field")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/compare"), show_default=True)
@click.option("--quiet", is_flag=True)
def compare_cmd(runs, models, recipe, sets, out, quiet, **options) -> None:
    """Compare finished RUNS, or train each of --models with one recipe and compare them.

    Flags mean what they do for `eanet train` (--epochs N trains N epochs). The same command again
    continues what it started: finished runs in OUT are reused, a stopped one is resumed."""
    from eanet.plots import plot_comparison

    check_out(out)  # before any training
    if not runs:
        from eanet.cli.progress import ConsoleReport
        from eanet.cli.train import _configure, _parse_sets, _resumed
        from eanet.train.trainer import train

        overrides = {k: v for k, v in options.items() if v is not None}
        if quiet:
            overrides["log"] = "quiet"
        set_values = _parse_sets(sets)
        runs = []
        for name in [m.strip() for m in models.split(",") if m.strip()]:
            run_dir = out / name
            # the same command again continues what it started: a finished run is reused, a stopped one resumed
            # (with the settings it was started with; a different one is refused by name)
            started = (run_dir / "checkpoint-last.pt").is_file() or RunFolder(run_dir).results_json.is_file()
            if started:
                cfg = _resumed(run_dir, {**overrides, "model": name}, set_values, recipe or "keras-example")
            else:
                cfg = _configure(recipe or "keras-example", {**overrides, "model": name, "out": str(run_dir)},
                                 set_values)
            report = ConsoleReport(cfg.log)
            try:
                runs.append(train(cfg, resume=run_dir if started else None, report=report, progress=report.bars,
                                  command=f"eanet compare --models {models}").run_dir)
            finally:
                report.close()
    rows = [read_run(Path(r)) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, "eanet compare\n")
    text = table(rows)
    groups = seed_groups(rows)
    if groups:
        text += "\n\nRepeats of one setting with different seeds (sample standard deviation):\n\n" + seed_table(groups)
    atomic_write_text(out / "compare.md", text + "\n")
    listed = [{k: v for k, v in r.items() if k not in ("history", "setting")} for r in rows]
    atomic_write_text(out / "compare.json", json.dumps({"runs": listed, "seed_groups": groups}, indent=2) + "\n")
    plot_comparison({f"{r['model']} ({Path(r['run']).name})": r["history"] for r in rows}, out / "compare.png",
                    title="EANet vs ViT")
    click.echo(text)
    click.echo(f"\ntable: {out / 'compare.md'}   plot: {out / 'compare.png'}")
