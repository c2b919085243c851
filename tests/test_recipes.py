"""Every shipped recipe resolves, builds its model at each of its image sizes, and says its own size."""

import inspect
import re
from pathlib import Path

import pytest
import torch
import yaml

import eanet
from eanet.models import model_spec
from eanet.models.inspect import count_parameters
from eanet.train.config import RECIPES_DIR, TrainConfig, list_recipes, resolve_config


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


RESULTS = Path(__file__).resolve().parents[1] / "results"
RUN_FIELDS = {"seed", "val_fraction", "out", "data_dir", "log"}  # what a reported run sets on the command line


def _what_it_trains(config: dict) -> dict:
    """A run's configuration as the network and schedule it defines: the model as its full constructor
    arguments (a run named ``eanet_keras`` + ``model_args`` before the budget variants had names is the
    same network as ``eanet_conv_medium``), and a budget run's warmup as its share of the steps (``epochs:
    16`` with ``warmup_epochs: 1`` under a time budget is ``warmup_fraction: 0.0625``). A field the run's
    config.yaml lacks was added since, and the run trained as its default says (``init_from: null``)."""
    config = {**TrainConfig().to_dict(), **config}
    config = {k: v for k, v in config.items() if k not in RUN_FIELDS}
    spec = model_spec(config["model"])
    defaults = {n: p.default for n, p in inspect.signature(spec.cls).parameters.items()}
    config["model"] = {**defaults, **spec.config, **config.pop("model_args", {})}
    if config.get("time_budget") and config.get("epochs"):
        config["warmup_fraction"] = config.pop("warmup_epochs", 0) / config["epochs"]
        config["epochs"], config["warmup_epochs"] = None, 0.0
    return config


def _recipe_30min() -> dict:
    """`cifar100-30min` as the trainer writes a run's config.yaml (yaml.safe_dump of TrainConfig.to_dict)."""
    return _what_it_trains(yaml.safe_load(yaml.safe_dump(resolve_config("cifar100-30min").to_dict())))


def test_30min_recipe_is_the_configuration_of_its_reported_runs():
    """README's `cifar100-30min` row is the three seeds in results/cifar100-30min-m1-s{0,1,2}/: the recipe
    file must stay the configuration they trained with, field for field."""
    recorded = sorted(RESULTS.glob("cifar100-30min-m1-s[0-9]/config.yaml"))
    assert len(recorded) == 3, "the three reported seeds' run folders"
    recipe = _recipe_30min()
    assert recipe["epochs"] is None and recipe["warmup_fraction"] == 0.0625
    for path in recorded:
        assert _what_it_trains(yaml.safe_load(path.read_text())) == recipe, path.parent.name


def test_30min_recipe_is_its_previous_version_plus_cutmix():
    """The runs of the previous 30-minute recipe (results/earlier/*-l0/: three seeds before the bf16 kernels,
    two with them) trained one configuration, and today's recipe is that configuration with CutMix on half
    the batches: the README's comparison of the two rows is of CutMix (and machine and kernels), nothing else."""
    earlier = sorted((RESULTS / "earlier").glob("cifar100-30min-*s[0-9]-l0/config.yaml"))
    earlier = [p for p in earlier if "self" not in p.parent.name]
    assert len(earlier) == 5, "the previous recipe's five external-attention runs"
    configs = [_what_it_trains(yaml.safe_load(p.read_text())) for p in earlier]
    assert all(c == configs[0] for c in configs), [p.parent.name for p in earlier]
    recipe = _recipe_30min()
    changed = {k for k in recipe.keys() | configs[0].keys() if recipe.get(k) != configs[0].get(k)}
    assert changed == {"cutmix_alpha", "mix_prob"}
    assert (recipe["cutmix_alpha"], recipe["mix_prob"]) == (1.0, 0.5)
