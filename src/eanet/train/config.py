"""Every training hyper-parameter in one place, recipes as YAML files, overrides from the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from eanet.errors import EanetError

__all__ = ["TrainConfig", "RECIPES_DIR", "list_recipes", "load_recipe", "resolve_config"]

# The recipes ship inside the package (src/eanet/recipes/*.yaml), so an installed eanet has them too.
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = "cifar100-fast"


@dataclass
class TrainConfig:
    """A training run, fully specified. A recipe file sets some fields; the CLI overrides any."""

    # what
    recipe: str = "custom"
    model: str = "eanet_keras"
    model_args: dict = field(default_factory=dict)  # overrides of the registered variant
    dataset: str = "cifar100"
    data_dir: str | None = None
    val_fraction: float = 0.2  # the seed's validation_split: the LAST 20% of the training arrays
    # how long
    epochs: int = 50
    max_steps: int | None = None  # stop after this many optimizer steps (for smoke tests)
    time_budget: float | None = None  # minutes: fit the schedule to it from the measured speed
    # optimisation
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1  # PyTorch AdamW (decay scaled by lr); see recipes/keras-example.yaml
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-7  # Keras' AdamW epsilon
    decay_norm_and_bias: bool = True  # Keras decays every variable; better recipes exempt them
    label_smoothing: float = 0.1
    schedule: str = "constant"  # constant | cosine (linear warmup then cosine decay)
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    grad_clip: float | None = None  # max global gradient norm
    ema_decay: float | None = None  # weight EMA, evaluated and saved instead of the raw weights
    # data augmentation (eanet.augment)
    augment: str = "keras"
    augment_args: dict = field(default_factory=dict)  # the policy's own parameters (e.g. padding)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    erasing_prob: float = 0.0
    # progressive resizing (eanet.train.resolution): [[start_fraction, image_size], ...] over the steps
    resolution_schedule: list | None = None
    # machine
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    compile: bool = False
    threads: int | None = None
    eval_batch_size: int = 500
    tta: str = "none"  # test-time augmentation for the test split: eanet.evaluate.TTA_MODES
    val_tta: str | None = None  # for the per-epoch validation (None: as tta); "none" makes it cheaper
    # output
    out: str | None = None  # run folder; default runs/<recipe>-<model>-s<seed>
    checkpoint_seconds: float = 60.0  # also checkpoint within an epoch this often
    log: str = "progress"  # progress | quiet | jsonl

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EanetError(f"{source}: unknown field(s) {', '.join(unknown)}")
        cfg = cls(**data)
        cfg.betas = tuple(cfg.betas)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from eanet.evaluate import TTA_MODES  # the one list of test-time augmentations evaluate() knows

        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch size must be >= 1"),
            (self.lr > 0, "learning rate must be > 0"),
            (0.0 <= self.val_fraction < 1.0, "validation fraction must be in [0, 1)"),
            (self.schedule in ("constant", "cosine"), f"unknown schedule {self.schedule!r} (constant, cosine)"),
            (self.precision in ("fp32", "bf16"), f"unknown precision {self.precision!r} (fp32, bf16)"),
            (self.log in ("progress", "quiet", "jsonl"), f"unknown log mode {self.log!r} (progress, quiet, jsonl)"),
            (self.max_steps is None or self.max_steps >= 1, "max steps must be >= 1"),
            (self.time_budget is None or self.time_budget > 0, "time budget must be > 0 minutes"),
            (self.tta in TTA_MODES, f"unknown test-time augmentation {self.tta!r} ({', '.join(TTA_MODES)})"),
            (self.val_tta in (None, *TTA_MODES),
             f"unknown test-time augmentation {self.val_tta!r} ({', '.join(TTA_MODES)})"),
            (self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "EMA decay must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise EanetError(message)
        if self.resolution_schedule is not None:  # its form here; the sizes against the data's in training
            from eanet.train.resolution import ResolutionSchedule

            ResolutionSchedule(self.resolution_schedule)


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> dict:
    """A recipe's fields: ``name`` in ``recipes/`` or a path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise EanetError(f"no recipe {name_or_path!r}; known recipes: {', '.join(list_recipes())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EanetError(f"cannot parse recipe {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EanetError(f"recipe {path} must be a mapping of field: value")
    data.setdefault("recipe", path.stem)
    return data


def resolve_config(recipe: str | None = None, *, sets: dict | None = None, **overrides) -> TrainConfig:
    """Recipe file, then the non-``None`` ``overrides`` on top, then ``sets`` (``--set key=value``) as
    given, ``None`` included (``--set time_budget=null`` removes a recipe's budget): the run's full
    configuration."""
    data = load_recipe(recipe or DEFAULT_RECIPE)
    given = [(k, v) for k, v in overrides.items() if v is not None] + list((sets or {}).items())
    for key, value in given:
        if key in ("model_args", "augment_args"):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return TrainConfig.from_dict(data, source=f"recipe {data.get('recipe')}")
