"""Every shipped recipe resolves, builds its model at each of its image sizes, and says its own size."""

import re

import pytest
import torch

import eanet
from eanet.models.inspect import count_parameters
from eanet.train.config import RECIPES_DIR, list_recipes, resolve_config


def test_the_budget_recipes_ship():
    assert {"keras-example", "cifar100-fast", "cifar100-30min"} <= set(list_recipes())


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_model_trains_at_every_image_size(name):
    cfg = resolve_config(name)
    torch.manual_seed(0)
    model = eanet.create_model(cfg.model, num_classes=100, img_size=32, **cfg.model_args)
    sizes = [size for _, size in cfg.resolution_schedule] if cfg.resolution_schedule else [32]
    for size in sizes:
        model.zero_grad()
        logits = model(torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8))
        assert logits.shape == (2, 100)
        logits.logsumexp(-1).mean().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad), size


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_comment_gives_its_parameter_count(name):
    """A recipe's header that quotes a parameter count quotes the model it builds."""
    claimed = re.findall(r"([\d,]{6,}) parameters", (RECIPES_DIR / f"{name}.yaml").read_text())
    if not claimed:
        pytest.skip(f"recipe {name} quotes no parameter count")
    cfg = resolve_config(name)
    model = eanet.create_model(cfg.model, num_classes=100, img_size=32, **cfg.model_args)
    assert {int(c.replace(",", "")) for c in claimed} == {count_parameters(model)}


def test_30min_recipe_is_the_fast_recipe_with_the_reported_flags():
    """README's `cifar100-30min` rows were trained as `--recipe cifar100-fast` plus these overrides; the
    recipe file must stay the configuration those runs resolved to (their config.yaml)."""
    flags = {"time_budget": 30, "erasing_prob": 0.25,
             "model_args": {"drop_path": 0.1, "stem_channels": [32, 64, 64, 128], "stem_strides": [1, 2, 1, 2]}}
    via_flags = vars(resolve_config("cifar100-fast", sets=flags))
    recipe = vars(resolve_config("cifar100-30min"))
    assert via_flags.pop("recipe") == "cifar100-fast" and recipe.pop("recipe") == "cifar100-30min"
    assert via_flags == recipe
