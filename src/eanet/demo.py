"""The web demo: upload an image (or pick an example), see the top-5 labels and where the memory attends.

:func:`build_app` makes a Gradio app around a loaded model; ``eanet serve`` runs it and ``eanet push
--space`` ships it as a Hugging Face Space (:data:`SPACE_APP`). Gradio is the ``demo`` extra. Bad input
(not an image, an image over Pillow's size limit, nothing uploaded) is answered with a message in the
page, and the server keeps serving.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from eanet.errors import EanetError

__all__ = ["SPACE_APP", "build_app", "classify", "model_info"]

MAX_FILE_SIZE = "20mb"  # uploads above this are refused by the server before they are read


def model_info(model: nn.Module, model_dir: str | Path) -> str:
    """One Markdown line: the model's name, parameters and, when its card has them, its test accuracy."""
    from eanet.models.inspect import count_parameters

    text = f"**{getattr(model, 'variant', None) or 'model'}**, {count_parameters(model):,} parameters"
    card = Path(model_dir) / "README.md"
    if card.is_file():
        try:
            from huggingface_hub import ModelCard

            results = ModelCard.load(card).data.eval_results or []
        except Exception:  # noqa: BLE001 - a card without metrics: the line simply has none
            results = []
        for r in results:
            text += f" | {r.metric_name} on {r.dataset_name}: {r.metric_value}%"
    return text


def classify(model: nn.Module, image_path: str | None, *, top: int = 5) -> tuple[dict[str, float], str]:
    """Top-``top`` labels with probabilities, and a PNG (path) of the attention maps, for one image file."""
    from eanet.plots import plot_attention
    from eanet.predict import class_names, load_image

    if not image_path:
        raise EanetError("no image: upload one, or pick an example")
    pixels = load_image(image_path, model.img_size, channels=model.in_chans)
    with torch.no_grad():
        probs = model(pixels[None]).softmax(-1)[0]
    names = class_names(model, model.num_classes)
    best = probs.topk(min(top, len(names)))
    labels = {names[i]: float(p) for p, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)}
    maps = [m[0].numpy() for m in model.attention_maps(pixels[None])]
    shown = sorted({0, len(maps) // 2, len(maps) - 1})  # first, middle and last block
    panel = Path(tempfile.mkdtemp(prefix="eanet-demo-")) / "attention.png"
    plot_attention(pixels.permute(1, 2, 0).numpy(), maps, panel, blocks=shown, top=3,
                   title=f"{names[int(best.indices[0])]} ({float(best.values[0]):.0%})")
    return labels, str(panel)


def build_app(model: nn.Module, *, info: str = "", examples: list[str] | None = None):
    """A Gradio ``Blocks`` app: image in; top-5 labels, the attention panel and the model's line out."""
    import gradio as gr

    def run(image_path):
        try:
            return classify(model, image_path)
        except EanetError as exc:  # said with the uploaded file's name, not the server's copy of it
            message = str(exc).replace(str(image_path), Path(image_path).name) if image_path else str(exc)
            raise gr.Error(message) from None

    with gr.Blocks(title="eanet: external attention") as app:
        gr.Markdown("# External attention image classifier\n" + info)
        with gr.Row():
            with gr.Column():
                # a plain file input: every upload reaches eanet's own decoder, so a file that is not an image
                # gets eanet's one-line message instead of a preprocessing error
                image = gr.File(type="filepath", label="image (any format Pillow reads)")
                button = gr.Button("Classify", variant="primary")
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[image])
            with gr.Column():
                labels = gr.Label(num_top_classes=5, label="top-5")
                panel = gr.Image(type="filepath", label="attention: mean map and the units with the most mass")
        button.click(run, inputs=[image], outputs=[labels, panel], api_name="classify")
    return app


# A Space's app.py (eanet push --space): the model is the Space's own files, beside it.
SPACE_APP = '''import eanet
from eanet.demo import build_app, model_info

model = eanet.load_model(".")
build_app(model, info=model_info(model, ".")).queue(default_concurrency_limit=2).launch()
'''
