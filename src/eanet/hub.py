"""Saving and loading in the Hugging Face layout (``config.json`` + ``model.safetensors``), and model cards.

:class:`~eanet.models.EANet` carries huggingface_hub's ``PyTorchModelHubMixin``, so
``model.save_pretrained(dir)`` and ``EANet.from_pretrained(dir)`` work as in any Hub library. The
front doors here add what a command line needs: :func:`save_model` writes both files atomically
(``config.json`` also names the architecture and the variant), and :func:`load_model` checks the
folder before it allocates anything: the configuration against the constructor (types, ranges, a
sensible size, class names matching the classes), the weights against the model (names, shapes,
finite values). Every problem is one :class:`~eanet.errors.EanetError` line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from eanet.errors import EanetError, one_line
from eanet.fileio import atomic_write_text
from eanet.models import EANet, list_models, model_spec
from eanet.models.registry import check_model_args, identify_variant, set_variant

__all__ = ["ARCHITECTURES", "check_finite", "load_model", "read_config", "resolve_model", "save_model",
           "write_model_card"]

ARCHITECTURES = {"EANet": EANet}
PAPER = "https://arxiv.org/abs/2105.02358"


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # user/name, as the Hub writes repository ids
DOWNLOADED = ["config.json", "model.safetensors", "README.md", "config.yaml"]


def is_repo_id(name: str | Path) -> bool:
    """Whether ``name`` means a Hub repository: it looks like ``user/name`` and is not a local path (it does not
    exist, and its first part is not a local folder: a typo in runs/NAME must not become a download)."""
    return (not Path(name).exists() and REPO_ID.match(str(name)) is not None
            and not Path(str(name).split("/")[0]).is_dir())


def resolve_model(name: str | Path, *, revision: str | None = None) -> Path:
    """A local folder as it is, or a Hub repository id (``user/name``) downloaded through the Hugging Face
    cache (``HF_HUB_OFFLINE=1`` uses the cache alone). ``user/name`` is a local path when ``user/`` is a
    local folder. Errors are one :class:`EanetError` line."""
    path = Path(name)
    if not is_repo_id(name):
        if revision is not None:
            raise EanetError(f"--revision applies to a Hub repository id, and {name} is a local path")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name), revision=revision, allow_patterns=DOWNLOADED))
    except LocalEntryNotFoundError:
        raise EanetError(f"{name} is neither a local folder nor in the Hugging Face cache, and the Hub cannot "
                         "be reached (HF_HUB_OFFLINE, or no network)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise EanetError(f"cannot download {name} from the Hub: {one_line(exc)}") from None


def read_config(model_dir: str | Path) -> dict:
    """The ``config.json`` of a saved model, checked to be present, readable and a mapping."""
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        if str(model_dir) in list_models():
            raise EanetError(f"{model_dir} names an architecture, not a trained model: give a run folder, a saved "
                             f"model folder or a Hub repository id (eanet train --model {model_dir} trains one)")
        raise EanetError(f"model folder not found: {model_dir}")
    if not path.is_file():
        raise EanetError(f"{model_dir} is not a saved model: it has no config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EanetError(f"cannot read {path}: {one_line(exc)}") from None
    if not isinstance(config, dict):
        raise EanetError(f"{path} must be a JSON object of model arguments, got {type(config).__name__}")
    return config


def save_model(model: nn.Module, model_dir: str | Path) -> None:
    """``config.json`` and ``model.safetensors`` into ``model_dir``, each written atomically."""
    model_dir = Path(model_dir)
    config = dict(getattr(model, "_hub_mixin_config", {}))
    config.update(architecture=type(model).__name__, variant=getattr(model, "variant", None))
    model._save_pretrained(model_dir)
    atomic_write_text(model_dir / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinity: they can only give meaningless predictions."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise EanetError(f"{where}: {name} holds non-finite values (NaN or infinity)")


def load_model(model_dir: str | Path, *, map_location: str = "cpu", revision: str | None = None) -> nn.Module:
    """Load a model saved by :func:`save_model`, ``save_pretrained`` or ``eanet train``, in eval mode: a
    local folder, or a Hub repository id such as ``"user/eanet-cifar100"`` (:func:`resolve_model`)."""
    from safetensors import safe_open

    model_dir = resolve_model(model_dir, revision=revision)
    config = read_config(model_dir)
    where = str(Path(model_dir) / "config.json")
    architecture, variant = config.pop("architecture", "EANet"), config.pop("variant", None)
    cls = ARCHITECTURES.get(architecture)
    if cls is None:
        raise EanetError(f"{where}: unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    args = check_model_args(cls, config, where=where)
    weights = Path(model_dir) / "model.safetensors"
    if not weights.is_file():
        raise EanetError(f"{model_dir} has no model.safetensors")
    model = cls(**args)
    expected = model.state_dict()
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = set(f.keys())
            missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or unexpected:
                raise EanetError(f"{weights} does not match {where}: " + "; ".join(
                    part for part in (f"missing {', '.join(missing[:4])}" if missing else "",
                                      f"unexpected {', '.join(unexpected[:4])}" if unexpected else "") if part))
            tensors = {}
            for name in expected:
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(expected[name].shape):
                    raise EanetError(f"{weights} does not match {where}: {name} has shape {list(shape)} in the "
                                     f"file, {list(expected[name].shape)} in the model")
                tensors[name] = f.get_tensor(name)
    except EanetError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: say so in one line
        raise EanetError(f"cannot read {weights}: {one_line(exc)}") from None
    check_finite(tensors, str(weights))
    model.load_state_dict(tensors, strict=True)
    set_variant(model, variant or identify_variant(cls, args))  # folders saved before config.json named it
    return model.to(map_location).eval()


# the token mixer a model card names, by the model's ``attention``
MIXER_DESCRIPTIONS = {
    "external": f'external attention (Guo et al., 2021, ["Beyond Self-attention: External Attention using Two '
                f'Linear Layers for Visual Tasks"]({PAPER}))',
    "self": "multi-head self-attention (a ViT-style baseline, in place of external attention)",
}
HUB_DATASETS = {"cifar100": "cifar100", "cifar10": "cifar10"}  # dataset ids on the Hugging Face Hub
LOCAL_PATH_FIELDS = ("data_dir", "out")  # machine-specific: never in a card


def _what_it_is(model: nn.Module) -> str:
    variant = getattr(model, "variant", None) or "a custom model"
    base = variant.removesuffix("-custom")
    try:
        description = model_spec(base).description
    except EanetError:
        return f"`{variant}`"
    if variant.endswith("-custom"):
        return f"`{variant}`: the registered `{base}` ({description}) with other arguments"
    return f"`{variant}` ({description})"


def write_model_card(model_dir: str | Path, *, run_name: str, model: nn.Module, dataset: str, dataset_id: str,
                     test_metrics: dict, config: dict, parameters: int, command: str, epochs: int, steps: int,
                     evaluation: str = "", continued: list[str] | tuple[str, ...] = ()) -> Path:
    """``README.md`` in the Hugging Face format, its ``model-index`` holding the measured test metrics.

    Accuracies are percentages rounded to two decimals, as the Keras example prints them; both are of
    metric type ``accuracy`` (named top-1 and top-5). ``dataset`` is the dataset's name as people write
    it, ``dataset_id`` eanet's name for it; ``evaluation`` says how the test split was evaluated (the
    test-time augmentation). ``command`` started the run; ``continued`` lists the commands that resumed it, in
    order (a run stopped and continued with ``eanet train --resume``).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    def result(name: str, value: float) -> EvalResult:
        return EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type=HUB_DATASETS.get(dataset_id, dataset_id), dataset_name=dataset,
                          dataset_split="test", metric_type="accuracy", metric_name=name, metric_value=value)

    attention = getattr(model, "attention", "external")
    top1, top5 = round(100 * test_metrics["top1"], 2), round(100 * test_metrics["top5"], 2)
    start = config.get("init_from")
    data = ModelCardData(
        base_model=start if isinstance(start, str) and is_repo_id(start) else None,
        model_name=run_name, library_name="eanet", license="apache-2.0", pipeline_tag="image-classification",
        tags=["image-classification", f"{attention}-attention", "eanet", "pytorch", "arxiv:2105.02358"],
        datasets=[HUB_DATASETS[dataset_id]] if dataset_id in HUB_DATASETS else None, metrics=["accuracy"],
        eval_results=[result("Top-1 accuracy", top1), result("Top-5 accuracy", top5)],
    )
    mixer = MIXER_DESCRIPTIONS.get(attention, f"{attention} attention")
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.items()
                         if v not in (None, {}, []) and k not in LOCAL_PATH_FIELDS)
    names = list(getattr(model, "class_names", None) or [])
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    size = getattr(model, "img_size", 32)
    if continued:
        times = "once" if len(continued) == 1 else f"{len(continued)} times"
        resumes = "; ".join(f"`{c}`" for c in dict.fromkeys(continued))
        command_line = f"Command: `{command}`; stopped and continued {times} ({resumes})."
    else:
        command_line = f"Command: `{command}`"
    body = f"""
# {run_name}

{_what_it_is(model)}, {parameters:,} trainable parameters, trained on {dataset} with the `eanet` package{
f", starting from the weights of `{start}`" if start else ""}.
Its token mixer is {mixer}.

## Results on the {dataset} test split

| metric | value |
|---|---|
| top-1 accuracy | {top1:.2f}% |
| top-5 accuracy | {top5:.2f}% |
| loss | {test_metrics["loss"]:.4f} |

Measured by evaluating these weights on all {test_metrics["count"]:,} test images after training
{epochs} epoch{"s" if epochs != 1 else ""} ({steps:,} optimizer steps){f", with {evaluation}" if evaluation else ""}
(`eanet evaluate <this folder>` gives the same figures).

## Use

```python
import eanet
model = eanet.load_model("path/to/this/folder")   # takes raw 0-255 RGB pixels (B, 3, H, W)
```

or `eanet predict path/to/this/folder image.png`.

## Limitations

- It knows only the {len(names) or model.num_classes} classes it was trained on{f" ({shown})" if shown else ""}.
  Every image gets one of these labels: a photo of something outside this label set is still given the
  nearest of them, with no way to say "none of these".
- It was trained on {size}x{size} images; `eanet predict` resizes any image to {size}x{size} first, so
  fine detail in larger photos is lost. Accuracy on images unlike {dataset} has not been measured.

## Training

{command_line}

| setting | value |
|---|---|
{settings}

Paper: [Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks]({PAPER}) (Guo et al., 2021).
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = Path(model_dir) / "README.md"
    atomic_write_text(path, str(card))
    return path
