"""``eanet attention MODEL IMAGE... --out DIR``: what the memory units attend to, as one PNG per image."""

from __future__ import annotations

from pathlib import Path

import click

from eanet.cli import summary
from eanet.errors import EanetError


def _blocks(spec: str | None, depth: int) -> list[int] | None:
    """``--blocks 1,4,8`` (1-based) as 0-based indices; None: every block."""
    if spec is None or spec == "all":
        return None
    try:
        blocks = [int(v) - 1 for v in spec.split(",") if v.strip()]
    except ValueError:
        raise EanetError(f"--blocks must be block numbers (1 to {depth}) separated by commas, or 'all'; "
                         f"got {spec!r}") from None
    if not blocks or any(not 0 <= b < depth for b in blocks):
        raise EanetError(f"--blocks must name blocks 1 to {depth}, got {spec!r}")
    return blocks


@click.command("attention", short_help=summary("attention"))
@click.argument("model_dir")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for the PNGs")
@click.option("--blocks", help="block numbers to show, e.g. 1,4,8 (default: all)")
@click.option("--top", type=click.IntRange(min=0, max=16), default=3, show_default=True,
              help="memory units (or heads) carrying the most attention to show per block")
@click.option("--revision", help="with a Hub repository id: the branch, tag or commit")
def attention_cmd(model_dir: str, images: tuple[Path, ...], out: Path, blocks: str | None, top: int,
                  revision: str | None) -> None:
    """Overlay each block's attention maps on IMAGE: the mean map and the TOP units with the most mass.

    A folder stands for the images directly inside it. One PNG per image, OUT/<image name>-attention.png,
    titled with the predicted class. For external attention the maps are the memory units' weights over
    the token grid (after the double normalisation); for self-attention, each head's attention received
    per token, averaged over queries.
    """
    import torch

    from eanet.fileio import check_overwrite, is_eanet_png
    from eanet.hub import load_model
    from eanet.plots import plot_attention
    from eanet.predict import class_names, expand_folders, load_image

    model = load_model(model_dir, revision=revision)
    chosen = _blocks(blocks, len(model.blocks))
    images = expand_folders(images)  # a folder: the images directly inside it
    targets = [out / f"{path.stem}-attention.png" for path in images]
    if len(set(targets)) != len(targets):
        raise EanetError("two images share a file name; give them different names")
    if out.exists() and not out.is_dir():
        raise EanetError(f"--out {out} is a file, not a folder")
    for target in targets:  # eanet's own maps are redrawn; any other file stays as it is
        check_overwrite(target, is_eanet_png, hint="give --out another folder")
    names = class_names(model, model.num_classes)
    for path, target in zip(images, targets, strict=True):
        pixels = load_image(path, model.img_size, channels=model.in_chans)
        with torch.no_grad():
            probs = model(pixels[None]).softmax(-1)[0]
        maps = [m[0].numpy() for m in model.attention_maps(pixels[None])]
        best = int(probs.argmax())
        mixer = "memory units" if model.attention == "external" else "heads"
        plot_attention(pixels.permute(1, 2, 0).numpy(), maps, target, blocks=chosen, top=top,
                       title=f"{path.name}: {names[best]} ({probs[best]:.0%}) | {model.variant or 'model'}, "
                             f"{mixer} with the most attention mass")
        click.echo(f"{path} -> {target} ({names[best]}, {probs[best]:.1%})")
