"""Training: the configuration (:mod:`.config`), the loop (:mod:`.trainer`), schedules and checkpoints."""

from eanet.train.config import TrainConfig, list_recipes, load_recipe, resolve_config

__all__ = ["TrainConfig", "list_recipes", "load_recipe", "resolve_config", "train"]


def train(cfg: TrainConfig, **kwargs):
    """Run a training configuration; see :func:`eanet.train.trainer.train`."""
    from eanet.train.trainer import train as _train

    return _train(cfg, **kwargs)
