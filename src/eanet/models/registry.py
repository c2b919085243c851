"""A registry of named model variants: configurations as data, built by :func:`create_model`.

A variant's name stands for one architecture. Arguments that depend only on the data (the number of
classes, the image size, the class names, the input statistics) can change without changing the
variant; any other override makes it a custom model, labelled ``<name>-custom`` wherever a run names
its model (:func:`variant_label`). Every construction goes through :func:`check_model_args`: types,
ranges and the parameter count are checked before a single weight is allocated.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import typing
from dataclasses import dataclass, field

import torch
from torch import nn

from eanet.errors import EanetError, one_line
from eanet.validation import check_range, check_type, describe

__all__ = [
    "DATA_ARGS", "MAX_PARAMETERS", "ModelSpec", "check_model_args", "create_model", "list_models", "model_spec",
    "identify_variant", "overrides_of", "register_model", "set_variant", "variant_label",
]

# constructor arguments that follow the data, not the architecture
DATA_ARGS = frozenset({"num_classes", "img_size", "in_chans", "class_names", "input_mean", "input_std"})
# far beyond any model this package trains (4 GB of fp32 weights): a config asking for more is a mistake
MAX_PARAMETERS = 1_000_000_000


@dataclass(frozen=True)
class ModelSpec:
    """A named variant: the class to build, its keyword arguments, and one line saying what it is."""

    name: str
    cls: type[nn.Module]
    config: dict = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, cls: type[nn.Module], *, description: str = "", **config) -> ModelSpec:
    """Register ``name`` as ``cls(**config)``. Names are unique."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    spec = ModelSpec(name=name, cls=cls, config=dict(config), description=description)
    _REGISTRY[name] = spec
    return spec


def model_spec(name: str) -> ModelSpec:
    """The spec registered as ``name``; an :class:`EanetError` (a ``ValueError`` too) naming the known models."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownModel(f"unknown model {describe(name)}; known models: {', '.join(list_models())}") from None


class UnknownModel(EanetError, ValueError):
    """A model name that is not registered."""


class ModelConfigError(EanetError, ValueError):
    """Model arguments that the constructor cannot take (a ``ValueError``; the CLI prints one line)."""


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _constructor(cls: type) -> tuple[dict, dict]:
    """The keyword arguments of ``cls`` with their defaults, and their type hints."""
    params = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return params, typing.get_type_hints(cls.__init__)


def _same(a, b) -> bool:
    return json.dumps(a, default=list) == json.dumps(b, default=list)


def _architecture(cls: type, args: dict) -> dict:
    defaults, _ = _constructor(cls)
    return {k: v for k, v in {**defaults, **args}.items() if k not in DATA_ARGS}


def overrides_of(name: str, args: dict) -> dict:
    """The architecture arguments in ``args`` that differ from the variant ``name`` as registered (data
    arguments aside): what ``create_model(name, **overrides)`` needs to build ``args``' architecture."""
    spec = model_spec(name)
    registered = _architecture(spec.cls, spec.config)
    return {k: v for k, v in _architecture(spec.cls, args).items() if not _same(v, registered.get(k))}


def identify_variant(cls: type, args: dict) -> str | None:
    """The registered variant whose architecture ``cls(**args)`` is, if any (data arguments aside)."""
    wanted = _architecture(cls, args)
    for spec in _REGISTRY.values():
        if spec.cls is cls and _same(_architecture(cls, spec.config), wanted):
            return spec.name
    return None


def variant_label(name: str, overrides: dict) -> str:
    """What ``create_model(name, **overrides)`` builds: ``name`` when the overrides leave its architecture
    as registered, another registered name when they make exactly that variant, else ``<name>-custom``."""
    spec = model_spec(name)
    full = {**spec.config, **overrides}
    if _same(_architecture(spec.cls, spec.config), _architecture(spec.cls, full)):
        return name
    return identify_variant(spec.cls, full) or f"{name}-custom"


def check_model_args(cls: type[nn.Module], args: dict, *, where: str = "model") -> dict:
    """``args`` checked against ``cls``'s constructor: known names, declared types, the class's
    ``ARG_RANGES`` and ``ARG_CHOICES``, then a build on the meta device (no memory) whose parameter
    count must stay under :data:`MAX_PARAMETERS`. Returns the arguments converted to their types."""
    if not isinstance(args, dict):
        raise ModelConfigError(f"{where}: model arguments must be a mapping of name: value, got {describe(args)}")
    defaults, hints = _constructor(cls)
    unknown = sorted(str(k) for k in args if k not in defaults)
    if unknown:
        raise ModelConfigError(f"{where}: unknown model argument(s) {', '.join(unknown)}; "
                         f"{cls.__name__} takes {', '.join(defaults)}")
    checked = {}
    for key, value in args.items():
        value = check_type(where, key, value, hints.get(key, typing.Any))
        low, high = getattr(cls, "ARG_RANGES", {}).get(key, (None, None))
        for item in value if isinstance(value, (list, tuple)) and key != "class_names" else [value]:
            if isinstance(item, (int, float)):
                check_range(where, key, item, low=low, high=high)
        choices = getattr(cls, "ARG_CHOICES", {}).get(key)
        if choices is not None and value not in choices:
            allowed = ", ".join(map(str, choices))
            raise ModelConfigError(f"{where}: {key} must be one of {allowed}, got {describe(value)}")
        checked[key] = value
    try:
        with torch.device("meta"):
            model = cls(**checked)
    except Exception as exc:  # noqa: BLE001 - the constructor's own refusal, said in one line
        raise ModelConfigError(f"{where}: {one_line(exc)}") from None
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise ModelConfigError(f"{where}: these arguments make a model of {count:,} parameters, more than the "
                         f"{MAX_PARAMETERS:,} eanet accepts")
    return checked


def create_model(name: str, **overrides) -> nn.Module:
    """Build the variant ``name``; keyword ``overrides`` replace entries of its configuration.

    The model's ``variant`` attribute (and its ``config.json``) says what it is: ``name``, or
    ``<name>-custom`` when the overrides change the architecture (:func:`variant_label`).

    >>> model = create_model("eanet_keras", num_classes=10)
    """
    spec = model_spec(name)
    args = check_model_args(spec.cls, {**spec.config, **overrides}, where=f"model {name}")
    model = spec.cls(**args)
    set_variant(model, variant_label(name, overrides))
    return model


def set_variant(model: nn.Module, variant: str | None) -> None:
    """Record the variant on the model and in the configuration its ``config.json`` is written from."""
    model.variant = variant
    config = getattr(model, "_hub_mixin_config", None)
    if isinstance(config, dict):
        config["variant"] = variant
