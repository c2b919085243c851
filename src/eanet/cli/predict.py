"""``eanet predict MODEL_DIR IMAGE...``: the top-k classes of each image."""

from __future__ import annotations

import json
from pathlib import Path

import click

from eanet.cli import summary
from eanet.hub import load_model


@click.command("predict", short_help=summary("predict"))
@click.argument("model_dir")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="how many classes to show per image")
@click.option("--json", "as_json", is_flag=True, help="print one JSON list (path, label, index, probability)")
@click.option("--revision", help="with a Hub repository id: the branch, tag or commit")
@click.pass_context
def predict_cmd(ctx: click.Context, model_dir: str, images: tuple[Path, ...], top_k: int, as_json: bool,
                revision: str | None) -> None:
    """Classify IMAGE files (a folder stands for the images directly inside it) with the model saved in
    MODEL_DIR (a folder, or a Hub repository id user/name).

    Any image Pillow reads works: it is converted to RGB (transparency composited on white, 16-bit
    rescaled) and the whole image is resized to the model's input size with antialiased bicubic
    resampling, without cropping. An unreadable file is reported on stderr and the others are still
    classified; the exit status is 1 if any image failed.
    """
    from eanet.predict import expand_folders, predict_images

    model = load_model(model_dir, revision=revision)
    results = predict_images(model, expand_folders(images), top_k=top_k)
    if as_json:
        for result in results:
            if not result.ok:
                click.echo(f"error: {result.error}", err=True)
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for result in results:
            if not result.ok:
                click.echo(f"error: {result.error}", err=True)
                continue
            click.echo(result.path)
            width = max(len(name) for name, _ in result.top)
            for rank, (name, prob) in enumerate(result.top, 1):
                click.echo(f"  {rank}. {name:<{width}}  {prob:7.2%}")
    if not all(r.ok for r in results):
        ctx.exit(1)
