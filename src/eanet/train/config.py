"""Every training hyper-parameter in one place, recipes as YAML files, overrides from the CLI."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from eanet.errors import EanetError, one_line
from eanet.validation import check_range, check_type, describe

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
    init_from: str | None = None  # start from a saved model's weights (folder, run or Hub id): fine-tuning
    dataset: str = "cifar100"
    data_dir: str | None = None
    val_fraction: float = 0.2  # the Keras example's validation_split: the LAST 20% of the training arrays
    # how long
    epochs: int | None = 50  # None: as many as the time budget allows (requires time_budget)
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
    warmup_epochs: float = 0.0  # linear warmup, in epochs
    warmup_fraction: float = 0.0  # or as a fraction of all steps (for time budgets, where epochs are not known)
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
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data, *, source: str = "config") -> TrainConfig:
        """Build and check a configuration: unknown fields, types and ranges are refused in one line
        that names the field, its value and what is allowed."""
        if not isinstance(data, dict):
            raise EanetError(f"{source} must be a mapping of field: value, got {describe(data)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise EanetError(f"{source}: unknown field(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        cfg = cls(**{k: check_type(source, k, v, hints[k]) for k, v in data.items()})
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Ranges and names of every field, and the model's arguments against its constructor: all that can
        be checked before any data is loaded."""
        from eanet.augment import build_augmentation
        from eanet.data import DATASETS
        from eanet.devices import parse_device
        from eanet.evaluate import TTA_MODES  # the one list of test-time augmentations evaluate() knows
        from eanet.models import model_spec
        from eanet.models.registry import check_model_args

        def rng(name, **limits):
            check_range(source, name, getattr(self, name), **limits)

        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise EanetError(f"{source}: {name} must be one of {', '.join(map(str, allowed))}, got "
                                 f"{describe(value)}")

        rng("epochs", low=1, high=1_000_000)
        if self.epochs is None and self.time_budget is None:
            raise EanetError(f"{source}: epochs is null (as many as fit) but there is no time_budget")
        rng("max_steps", low=1)
        rng("time_budget", low=0, low_open=True, high=1_000_000)
        rng("val_fraction", low=0, high=1, high_open=True)
        rng("batch_size", low=1, high=1_000_000)
        rng("eval_batch_size", low=1, high=1_000_000)
        rng("lr", low=0, low_open=True, high=100)
        rng("min_lr", low=0, high=self.lr)
        rng("weight_decay", low=0, high=1_000)
        for beta in self.betas:
            check_range(source, "betas", beta, low=0, high=1, high_open=True)
        rng("adam_eps", low=0, low_open=True, high=1)
        rng("label_smoothing", low=0, high=1, high_open=True)
        choice("schedule", ("constant", "cosine"))
        rng("warmup_epochs", low=0, high=self.epochs)
        rng("warmup_fraction", low=0, high=1, high_open=True)
        if self.warmup_epochs and self.warmup_fraction:
            raise EanetError(f"{source}: give warmup_epochs or warmup_fraction, not both")
        if self.warmup_epochs and self.epochs is None:
            raise EanetError(f"{source}: with epochs null (a time budget) give the warmup as warmup_fraction")
        rng("grad_clip", low=0, low_open=True)
        rng("ema_decay", low=0, high=1, low_open=True, high_open=True)
        for name in ("mixup_alpha", "cutmix_alpha"):
            rng(name, low=0, high=100)
        for name in ("mix_prob", "erasing_prob"):
            rng(name, low=0, high=1)
        rng("seed", low=0, high=2**63 - 1)
        rng("threads", low=1, high=4096)
        rng("checkpoint_seconds", low=0)  # 0: after every step
        choice("dataset", DATASETS)
        choice("precision", ("fp32", "bf16"))
        choice("log", ("progress", "quiet", "jsonl"))
        choice("tta", TTA_MODES)
        choice("val_tta", (None, *TTA_MODES))
        try:
            parse_device(self.device)
        except EanetError as exc:
            raise EanetError(f"{source}: {exc}") from None
        if self.out is not None:
            check_path(source, "out", self.out)
        if self.resolution_schedule is not None:  # its form here; the sizes against the data's in training
            from eanet.train.resolution import ResolutionSchedule

            ResolutionSchedule(self.resolution_schedule)
        build_augmentation(self.augment, image_size=32, num_classes=2, mixup_alpha=self.mixup_alpha,
                           cutmix_alpha=self.cutmix_alpha, mix_prob=self.mix_prob, erasing_prob=self.erasing_prob,
                           **self.augment_args)
        spec = model_spec(self.model)
        check_model_args(spec.cls, {**spec.config, **self.model_args}, where=f"{source}: model {self.model}")

    def warmup_steps(self, total_steps: int, steps_per_epoch: int) -> int:
        """Warmup length in steps: ``warmup_epochs`` epochs, or ``warmup_fraction`` of ``total_steps``."""
        if self.warmup_fraction:
            return round(self.warmup_fraction * total_steps)
        return min(round(self.warmup_epochs * steps_per_epoch), total_steps)


def check_path(source: str, name: str, value: str) -> None:
    """A path eanet will create: valid UTF-8, and no component longer than the file system allows."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EanetError(f"{source}: {name} is not valid UTF-8: {describe(value)}") from None
    for part in Path(value).parts:
        if len(part.encode()) > 255:
            raise EanetError(f"{source}: {name} has a path component of {len(part.encode())} bytes; "
                             "file systems allow 255")


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
        raise EanetError(f"cannot parse recipe {path}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise EanetError(f"recipe {path} must be a mapping of field: value")
    data.setdefault("recipe", path.stem)
    return data


def model_of(init_from: str) -> tuple[str, dict]:
    """The registered name and ``model_args`` that build the architecture of the saved model ``init_from``
    (a folder, run folder or Hub id): what a run started from it trains."""
    from eanet.hub import ARCHITECTURES, read_config, resolve_model
    from eanet.models.registry import identify_variant, overrides_of, variant_label

    folder = resolve_model(init_from)
    saved = read_config(folder)
    variant = saved.get("variant")
    if not isinstance(variant, str):  # saved before config.json named its variant: a registered one, or unknown
        cls = ARCHITECTURES.get(saved.get("architecture", "EANet"))
        variant = cls and identify_variant(cls, {k: v for k, v in saved.items() if k not in ("architecture",
                                                                                              "variant")})
    if not variant:
        raise EanetError(f"{folder / 'config.json'} is no registered model's architecture: eanet cannot tell "
                         "which model to train")
    name = variant.removesuffix("-custom")
    args = overrides_of(name, {k: v for k, v in saved.items() if k not in ("architecture", "variant")})
    if variant_label(name, args) != variant:
        raise EanetError(f"{folder / 'config.json'}: its arguments do not make a {variant}")
    return name, args


def resolve_config(recipe: str | dict | None = None, *, sets: dict | None = None, **overrides) -> TrainConfig:
    """Recipe (a name, a file, or its loaded fields), then the non-``None`` ``overrides`` on top, then
    ``sets`` (``--set key=value``) as given, ``None`` included (``--set time_budget=null`` removes a
    recipe's budget): the run's full configuration.

    With ``init_from`` the model is the saved one's (:func:`model_of`) in place of the recipe's; a ``model``
    asked for must be that one, and ``model_args`` asked for apply on top."""
    data = dict(recipe) if isinstance(recipe, dict) else load_recipe(recipe or DEFAULT_RECIPE)
    given = [(k, v) for k, v in overrides.items() if v is not None] + list((sets or {}).items())
    init_from = dict(given).get("init_from", data.get("init_from"))
    if init_from is not None:
        check_type("init_from", "init_from", init_from, str)
        name, args = model_of(init_from)
        asked = dict(given).get("model")
        if asked is not None and asked != name:
            raise EanetError(f"{init_from} holds model {name}: a run started from it trains {name}, not {asked}")
        data.update(model=name, model_args=args)
    for key, value in given:
        if key in ("model_args", "augment_args") and isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    source = f"recipe {data.get('recipe')}" + (" with the command line's values" if given else "")
    return TrainConfig.from_dict(data, source=source)
