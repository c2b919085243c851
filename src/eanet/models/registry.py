"""A registry of named model variants: configurations as data, built by :func:`create_model`."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

__all__ = ["ModelSpec", "register_model", "create_model", "list_models", "model_spec"]


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
    """The spec registered as ``name``; a ``ValueError`` naming the known models otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build the variant ``name``; keyword ``overrides`` replace entries of its configuration.

    >>> model = create_model("eanet_keras", num_classes=10)
    """
    spec = model_spec(name)
    return spec.cls(**{**spec.config, **overrides})
