"""Saving and loading in the Hugging Face layout: ``config.json`` + ``model.safetensors``.

:class:`~eanet.models.EANet` carries huggingface_hub's ``PyTorchModelHubMixin``, so
``model.save_pretrained(dir)`` writes both files (its ``config.json`` holds every constructor
argument) and ``EANet.from_pretrained(dir)`` reads them back. :func:`load_model` is the
front door that also checks the folder and reports problems in one line.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from torch import nn

from eanet.errors import EanetError
from eanet.evaluate import describe_tta
from eanet.fileio import atomic_write_text
from eanet.models import EANet

__all__ = ["load_model", "read_config", "write_model_card"]

ARCHITECTURES = {"EANet": EANet}


def read_config(model_dir: str | Path) -> dict:
    """The ``config.json`` of a saved model, checked to be present and readable."""
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise EanetError(f"model folder not found: {model_dir}")
    if not path.is_file():
        raise EanetError(f"{model_dir} is not a saved model: it has no config.json")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EanetError(f"cannot read {path}: {exc}") from None


def load_model(model_dir: str | Path, *, map_location: str = "cpu") -> nn.Module:
    """Load a model saved with ``save_pretrained`` (or by ``eanet train``), in eval mode."""
    config = read_config(model_dir)
    weights = Path(model_dir) / "model.safetensors"
    if not weights.is_file():
        raise EanetError(f"{model_dir} has no model.safetensors")
    cls = ARCHITECTURES.get(config.get("architecture", "EANet"))
    if cls is None:
        raise EanetError(f"{model_dir}: unknown architecture {config.get('architecture')!r}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints a line on local loads
            model = cls.from_pretrained(str(model_dir), map_location=map_location, strict=True)
    except Exception as exc:  # a damaged or mismatched file: say so in one line
        raise EanetError(f"cannot load the model in {model_dir}: {str(exc).splitlines()[0]}") from None
    return model.eval()


# the token mixer a model card names, by the model's ``attention``
MIXER_DESCRIPTIONS = {
    "external": 'external attention (Guo et al., 2021, "Beyond Self-attention: External Attention using Two '
                'Linear Layers for Visual Tasks")',
    "self": "multi-head self-attention (the ViT baseline, in place of external attention)",
}


def write_model_card(model_dir: str | Path, *, run_name: str, model_name: str, dataset: str, test_metrics: dict,
                     config: dict, parameters: int, command: str, attention: str = "external") -> Path:
    """``README.md`` in the Hugging Face format, its ``model-index`` holding the measured test metrics.

    Accuracies are percentages rounded to two decimals, as the seed prints them. ``attention`` is the
    model's token mixer (``"external"`` or ``"self"``): the card's description and tags name it.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    def result(metric_type: str, name: str, value: float) -> EvalResult:
        return EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type=dataset, dataset_name=dataset.upper(), dataset_split="test",
                          metric_type=metric_type, metric_name=name, metric_value=value)

    top1, top5 = round(100 * test_metrics["top1"], 2), round(100 * test_metrics["top5"], 2)
    data = ModelCardData(
        model_name=run_name, library_name="eanet", license="apache-2.0", pipeline_tag="image-classification",
        tags=["image-classification", f"{attention}-attention", "eanet", "pytorch"], datasets=[dataset],
        metrics=["accuracy"],
        eval_results=[result("accuracy", "Top-1 accuracy", top1), result("top-5 accuracy", "Top-5 accuracy", top5)],
    )
    tta = config.get("tta") or "none"
    tta = f" with {describe_tta(tta)}" if tta != "none" else ""
    mixer = MIXER_DESCRIPTIONS.get(attention, f"{attention} attention")
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.items() if v not in (None, {}, []))
    body = f"""
# {run_name}

`{model_name}` ({parameters:,} trainable parameters) trained on {dataset} with the `eanet` package:
{mixer} in the Keras example's image classifier.

## Results on the {dataset} test split

| metric | value |
|---|---|
| top-1 accuracy | {top1:.2f}% |
| top-5 accuracy | {top5:.2f}% |
| loss | {test_metrics["loss"]:.4f} |

Measured by evaluating these weights on all {test_metrics["count"]:,} test images after training{tta}
(`eanet evaluate <this folder>` gives the same figures).

## Use

```python
import eanet
model = eanet.load_model("path/to/this/folder")   # takes raw 0-255 RGB pixels (B, 3, H, W)
```

or `eanet predict path/to/this/folder image.png`.

## Training

Command: `{command}`

| setting | value |
|---|---|
{settings}
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = Path(model_dir) / "README.md"
    atomic_write_text(path, str(card))
    return path
