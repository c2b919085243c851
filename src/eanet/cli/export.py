"""``eanet export MODEL_DIR --onnx FILE``: an ONNX file with a dynamic batch, verified before it is kept."""

from __future__ import annotations

from pathlib import Path

import click

from eanet.cli import summary
from eanet.hub import load_model


@click.command("export", short_help=summary("export"))
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), required=True, help="the .onnx file to write")
@click.option("--opset", type=int, default=None,
              help="ONNX opset, 14 to 23 (default: the exporter's, 20; 14-17 use the TorchScript exporter)")
def export_cmd(model_dir: Path, onnx_path: Path, opset: int | None) -> None:
    """Export the model saved in MODEL_DIR to ONNX.

    The graph takes input `pixels`, float32 (batch, 3, H, W) raw 0-255 RGB pixels with a dynamic
    batch, and returns `logits` (batch, classes). The file is checked with onnx.checker and ONNX
    Runtime against PyTorch before it is written; a failed export leaves no file behind.
    """
    from eanet.extras import require

    onnx = require("onnx", extra="onnx", what="eanet export")

    from eanet.export import CHECK_BATCH, INPUT_NAME, OUTPUT_NAME, export_and_check

    model = load_model(model_dir)
    path, diff = export_and_check(model, onnx_path, opset=opset)
    written = onnx.load(str(path), load_external_data=False)
    version = next((o.version for o in written.opset_import if o.domain in ("", "ai.onnx")), "?")
    chans, size = getattr(model, "in_chans", 3), getattr(model, "img_size", 32)
    classes = getattr(model, "num_classes", "classes")
    click.echo(f"exported {model_dir} -> {path} ({path.stat().st_size / 1e6:.1f} MB, opset {version})")
    click.echo(f"  input  {INPUT_NAME}: float32 [batch, {chans}, {size}, {size}], raw 0-255 pixels")
    click.echo(f"  output {OUTPUT_NAME}: float32 [batch, {classes}]")
    click.echo(f"  onnx.checker ok; ONNX Runtime vs PyTorch at batch {CHECK_BATCH}: max abs difference {diff:.2e}")
