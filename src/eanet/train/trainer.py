"""The training loop, top to bottom: set-up, the epochs, the final model and its report.

:func:`train` runs a :class:`~eanet.train.config.TrainConfig` and leaves a complete run folder (layout
and rules: :mod:`eanet.run_folder`). It prints nothing: it reports through ``report(kind, payload)``
(``"start"``, ``"resume"``, ``"budget"``, ``"epoch_start"``, ``"step"``, ``"epoch"``, ``"done"``, and
``"finished"`` when ``--resume`` finds the run already complete), which the
command line turns into progress bars, summary lines or JSON.

Exact resume: the data order depends only on (seed, epoch), and every other random number (dropout,
augmentation) comes from torch's global generator, whose state is saved in each checkpoint along
with the model, optimizer, EMA, schedule, and the running sums of the epoch in progress.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from eanet.augment import build_augmentation
from eanet.data import DeviceLoader, load_dataset
from eanet.devices import resolve_device
from eanet.errors import EanetError, Interrupted, one_line
from eanet.evaluate import TTA_VIEWS, describe_tta, evaluate, soft_cross_entropy, topk_correct
from eanet.hub import load_model, save_model, write_model_card
from eanet.models import create_model
from eanet.models.inspect import count_parameters
from eanet.models.registry import variant_label
from eanet.plots import plot_curves
from eanet.progress import Factory
from eanet.run_folder import RunFolder
from eanet.train.budget import TimeBudget
from eanet.train.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from eanet.train.config import TrainConfig
from eanet.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    cleanup,
    setup_distributed,
)
from eanet.train.resolution import ResolutionSchedule, resize_batch, time_forward_backward
from eanet.train.schedule import learning_rate
from eanet.train.stopping import StopRequest

__all__ = ["CSV_COLUMNS", "Report", "RunResult", "default_run_dir", "train"]

CSV_COLUMNS = ["epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
               "lr", "seconds", "images_per_second"]
PROVISIONAL_EPOCHS = 16  # epochs: null with a time budget: the schedule's length until the budget fits it

Report = Callable[[str, dict], None]


@dataclass
class RunResult:
    run_dir: Path
    test: dict
    history: list = field(default_factory=list)


@dataclass
class Progress:
    """Where the run is: everything a checkpoint holds besides the model, optimizer and random state."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    total_steps: int = 0
    best_top1: float = -1.0
    history: list = field(default_factory=list)
    sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # loss * n, top-1, top-5 hits, n
    epoch_seconds: float = 0.0
    elapsed: float = 0.0
    commands: list = field(default_factory=list)  # the command lines that trained the run: the start, each resume


def default_run_dir(cfg: TrainConfig, root: str | Path = "runs") -> Path:
    """``runs/<recipe>-<variant>-s<seed>``, with ``-2``, ``-3``... when that folder is taken."""
    base = Path(root) / f"{Path(cfg.recipe).stem}-{variant_label(cfg.model, cfg.model_args)}-s{cfg.seed}"
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Keras' AdamW decays every variable; ``decay_norm_and_bias=False`` exempts biases, norms and
    the position embedding (all parameters with fewer than 2 dimensions, or named ``pos_embed``)."""
    if cfg.decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "pos_embed" in name else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(cfg: TrainConfig, *, resume: str | Path | None = None, command: str = "",
          report: Report | None = None, progress: Factory | None = None) -> RunResult:
    """Run ``cfg`` (or continue the run in folder ``resume``) and return the run folder and test metrics.
    ``report(kind, payload)`` hears about the run's progress, ``progress`` makes the data loading's bars
    (:mod:`eanet.progress`); both only on the main process."""
    cfg.validate()
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = setup_distributed(device)
    folder = RunFolder(resume if resume is not None else (cfg.out or default_run_dir(cfg)))
    quiet: Report = lambda kind, payload: None  # noqa: E731 - only the main process reports
    try:
        return Trainer(cfg, device, info, folder, report=report if info.is_main and report else quiet,
                       progress=progress if info.is_main else None, command=command).run(resume=resume is not None)
    finally:
        folder.release()
        cleanup(info)


class Trainer:
    """One training run. :meth:`run` reads top to bottom: set-up, the epochs (:meth:`train_epoch`), the
    final model (:meth:`finish`)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, info: DistInfo, folder: RunFolder, *,
                 report: Report, progress: Factory | None = None, command: str = ""):
        self.cfg, self.device, self.info, self.folder = cfg, device, info, folder
        self.report, self.progress_bars, self.command = report, progress, command

    # ---- set-up: the saved state, data, model, optimizer, schedule; the folder is claimed last, so a start
    # that fails leaves nothing behind
    def run(self, *, resume: bool) -> RunResult:
        cfg, info, folder = self.cfg, self.info, self.folder
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        state = None
        if resume and folder.results_json.is_file():  # finished: results.json is the last file a run writes
            results = folder.read_results()
            self.report("finished", {"run_dir": str(folder), "test": results["test"]})
            return RunResult(run_dir=folder.path, test=results["test"], history=folder.read_history())
        if resume:
            if info.is_main:
                folder.claim_existing()
            state = load_checkpoint(folder.checkpoint_last)
            check_resumable(state, cfg, folder.checkpoint_last)
        elif info.is_main:
            folder.check_new()
        self.setup_data()
        self.setup_model(start_from=cfg.init_from if state is None else None)  # a checkpoint holds its own
        self.progress = Progress(total_steps=min(self.step_cap, (cfg.epochs or PROVISIONAL_EPOCHS)
                                                 * self.steps_per_epoch))
        if state is not None:
            self.restore(state)
        p = self.progress
        p.commands.append(self.command or ("eanet train --resume RUN" if resume else "eanet train"))
        self.budget = self.make_budget(calibrated=state is not None)
        self.writer = None
        if info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            if not resume:
                folder.claim_new()
            folder.write_config(cfg.to_dict())
            self.writer = SummaryWriter(log_dir=str(folder.tensorboard), purge_step=p.global_step if state else None)
        ds = self.ds
        self.report("start", {"run_dir": str(folder), "model": self.model.variant, "parameters": self.params,
                              "dataset": cfg.dataset, "train": len(ds.train), "val": len(ds.val) if ds.val else 0,
                              "test": len(ds.test), "device": str(self.device), "processes": info.world_size,
                              "steps_per_epoch": self.steps_per_epoch})
        if state is not None:
            self.report("resume", {"run_dir": str(folder), "epoch": p.epoch + 1, "step": p.step_in_epoch,
                                   "steps_per_epoch": self.steps_per_epoch})

        # ---- the epochs (Ctrl-C or SIGTERM: stop at the next step, saved there; eanet.train.stopping)
        self.run_start, self.lr = time.perf_counter() - p.elapsed, cfg.lr
        stop = False
        with StopRequest() as self.stop_request:
            while p.epoch * self.steps_per_epoch < p.total_steps and not stop:
                epoch_start, first_step = time.perf_counter(), p.global_step
                stop = self.train_epoch()
                self.end_epoch()
                if stop == "signal":
                    raise self.interrupted(f"after epoch {p.epoch}")
                if self.budget is not None and not stop:
                    fitted = self.budget.after_epoch(first_step, p.global_step, time.perf_counter() - epoch_start,
                                                     time.perf_counter() - self.run_start, p.total_steps)
                    p.total_steps = fitted or p.total_steps
        return self.finish()

    def interrupted(self, where: str) -> Interrupted:
        signum = self.stop_request.signum
        name = signal.Signals(signum).name if signum else "a signal to another process of the run"
        return Interrupted(f"stopped by {name} {where}, with a checkpoint there: continue with "
                           f"`eanet train --resume {self.folder}`", signum or signal.SIGTERM)

    def setup_data(self) -> None:
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.seed)
        self.ds = ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_fraction=cfg.val_fraction,
                                    progress=self.progress_bars)
        if ds.num_classes < 2:
            raise EanetError(f"{cfg.dataset} has {ds.num_classes} class: a classifier needs at least two")
        if cfg.batch_size % info.world_size:
            raise EanetError(f"batch size {cfg.batch_size} is not divisible by {info.world_size} processes")
        # one process keeps the last partial batch (as Keras does); several drop it so every rank gets an equal share
        self.loader = DeviceLoader(ds.train, batch_size=cfg.batch_size, shuffle=True, drop_last=info.enabled,
                                   seed=cfg.seed, device=self.device, rank=info.rank, world_size=info.world_size)
        self.steps_per_epoch = len(self.loader)
        self.augment = build_augmentation(
            cfg.augment, image_size=ds.image_size, num_classes=ds.num_classes, mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha, mix_prob=cfg.mix_prob, erasing_prob=cfg.erasing_prob, **cfg.augment_args)
        self.sizes = (ResolutionSchedule(cfg.resolution_schedule, native=ds.image_size)
                      if cfg.resolution_schedule else None)
        # the most steps the run may take: --epochs and --max-steps; a time budget fits the schedule below that
        self.step_cap = min(n for n in (cfg.epochs and cfg.epochs * self.steps_per_epoch, cfg.max_steps, 10**12)
                            if n)

    def setup_model(self, start_from: str | None = None) -> None:
        """The model (input normalisation adapted like Keras' ``Normalization.adapt(x_train)``: all training
        arrays, the held-out validation part included; no labels are involved), optimizer and EMA.
        ``start_from``: a saved model whose weights it starts from (:meth:`load_start`)."""
        cfg, ds, device = self.cfg, self.ds, self.device
        self.model = model = create_model(cfg.model, num_classes=ds.num_classes, img_size=ds.image_size,
                                          class_names=list(ds.classes), **cfg.model_args)
        model.set_input_stats(*ds.channel_stats())
        if start_from is not None:
            self.load_start(start_from)
        model.to(device)
        self.params = count_parameters(model)
        # fused: one kernel for all parameters instead of a loop of small ops (the same update)
        self.optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay else None)
        forward = torch.compile(model) if cfg.compile else model
        if self.info.enabled:
            forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = forward
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

    def load_start(self, source: str) -> None:
        """Fine-tuning: every tensor of the saved model ``source`` (its input normalisation included, which its
        weights were trained with), except the head when the classes are not the same ones, in order."""
        model = self.model
        start = load_model(source)
        saved, own = start.state_dict(), model.state_dict()
        same_classes = list(getattr(start, "class_names", None) or []) == list(self.ds.classes)
        taken = {}
        for name, tensor in own.items():
            if name.startswith("head.") and not same_classes:
                continue
            if name not in saved or saved[name].shape != tensor.shape:
                found = list(saved[name].shape) if name in saved else "nothing"
                raise EanetError(f"cannot start from {source}: {name} is {found} there and {list(tensor.shape)} "
                                 f"here (a different image size or number of channels?)")
            taken[name] = saved[name]
        model.load_state_dict(taken, strict=False)
        self.report("init", {"source": source, "tensors": len(taken), "new_head": not same_classes,
                             "classes": self.ds.num_classes})

    def make_budget(self, *, calibrated: bool) -> TimeBudget | None:
        cfg, ds = self.cfg, self.ds
        if cfg.time_budget is None:
            return None
        forward_backward = {ds.image_size: 0.0}
        if self.sizes is not None:  # the cost model's per-size part, timed on a real batch before training
            batch = ds.train.images[:cfg.batch_size // self.info.world_size].to(self.device)
            forward_backward = time_forward_backward(self.model, batch, self.sizes.sizes, autocast=self.autocast)
        val_tta = cfg.val_tta or cfg.tta
        return TimeBudget(
            cfg.time_budget, steps_per_epoch=self.steps_per_epoch, batch_size=cfg.batch_size,
            step_cap=self.step_cap, sizes=self.sizes, native_size=ds.image_size, forward_backward=forward_backward,
            val_images=len(ds.val) if ds.val is not None else 0, test_images=len(ds.test),
            val_views=len(TTA_VIEWS[val_tta]), test_views=len(TTA_VIEWS[cfg.tta]), calibrated=calibrated,
            broadcast=lambda steps: int(broadcast_from_main([steps], self.info, self.device)[0]))

    def restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise EanetError(f"{self.folder.checkpoint_last} does not fit this run's model and optimizer: "
                             f"{one_line(exc)}") from None
        # a checkpoint written before the run's commands were kept starts their list with the first one known
        self.progress = Progress(**{k: state[k] for k in Progress.__dataclass_fields__ if k != "commands"},
                                 commands=list(state.get("commands", [])))
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    def checkpoint(self, name: str) -> None:
        model, ema, device = self.model, self.ema, self.device
        save_checkpoint(self.folder.path / name, {
            "config": self.cfg.to_dict(), "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, **asdict(self.progress),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        })

    # ---- one epoch of optimizer steps; True when the run must stop (time budget, --max-steps), "signal" when a
    # signal asked it to at the epoch's last step (a signal earlier in the epoch raises Interrupted here)
    def train_epoch(self) -> bool | str:
        cfg, p, model, optimizer = self.cfg, self.progress, self.model, self.optimizer
        model.train()
        epoch_steps = min(self.steps_per_epoch, p.total_steps - p.epoch * self.steps_per_epoch)
        self.report("epoch_start", {"epoch": p.epoch + 1, "steps": epoch_steps, "initial": p.step_in_epoch})
        tick = last_checkpoint = time.perf_counter()
        for step, (images, labels) in enumerate(self.loader.epoch(p.epoch, start_step=p.step_in_epoch),
                                                start=p.step_in_epoch):
            if step >= epoch_steps:
                break
            lr = learning_rate(p.global_step, base_lr=cfg.lr, total_steps=p.total_steps, schedule=cfg.schedule,
                               warmup_steps=cfg.warmup_steps(p.total_steps, self.steps_per_epoch), min_lr=cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, targets = self.augment(images, labels)
            if self.sizes is not None:  # progressive resizing
                inputs = resize_batch(inputs, self.sizes.size_at(p.global_step, p.total_steps))
            with self.autocast:
                logits = self.forward(inputs)
            loss = soft_cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                last = (f"the last good checkpoint is {self.folder.checkpoint_last}"
                        if self.folder.checkpoint_last.is_file() else "no checkpoint was written yet")
                raise EanetError(f"the loss became {loss.item()} at epoch {p.epoch + 1}, step {step}: training "
                                 f"stopped; {last}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(model)
            p.global_step += 1
            self.lr = lr

            # running metrics of the epoch (summed over processes)
            top1, top5 = topk_correct(logits.detach(), labels)
            n = len(labels)
            asked = 1.0 if self.stop_request.signum is not None else 0.0  # summed, so every process agrees
            *sums, asked = all_reduce_sum([loss.item() * n, float(top1.sum()), float(top5.sum()), float(n), asked],
                                          self.info, self.device)
            p.sums = [a + b for a, b in zip(p.sums, sums, strict=True)]
            now = time.perf_counter()
            p.epoch_seconds += now - tick
            tick, p.elapsed = now, now - self.run_start
            self.report("step", {"step": step + 1, "loss": p.sums[0] / p.sums[3], "top1": p.sums[1] / p.sums[3],
                                 "images_per_second": p.sums[3] / max(p.epoch_seconds, 1e-9)})
            if self.info.is_main and p.global_step % 50 == 0:
                self.writer.add_scalar("train/step_loss", loss.item(), p.global_step)

            if self.budget is not None:  # calibrate once, then stop when the minutes are spent
                fitted = self.budget.after_step(p.global_step, now, p.elapsed, p.total_steps)
                if fitted is not None:
                    p.total_steps = fitted
                    epoch_steps = min(self.steps_per_epoch, p.total_steps - p.epoch * self.steps_per_epoch)
                    self.report("budget", {"minutes": cfg.time_budget, "total_steps": p.total_steps,
                                           "epochs": p.total_steps / self.steps_per_epoch, "epoch_steps": epoch_steps})
                if self.budget.out_of_time(p.elapsed):
                    return True  # finish now, leave the tail of the schedule unused
            if cfg.max_steps and p.global_step >= cfg.max_steps:
                return True
            if asked:
                if step + 1 == epoch_steps:
                    return "signal"  # the epoch's end writes the checkpoint
                p.step_in_epoch = step + 1
                if self.info.is_main:
                    self.checkpoint("checkpoint-last.pt")
                raise self.interrupted(f"in epoch {p.epoch + 1} at step {step + 1} of {epoch_steps}")
            if self.info.is_main and now - last_checkpoint >= cfg.checkpoint_seconds and step + 1 < epoch_steps:
                p.step_in_epoch = step + 1
                self.checkpoint("checkpoint-last.pt")
                last_checkpoint = time.perf_counter()
        return False

    # ---- end of an epoch: validate, record, checkpoint
    def end_epoch(self) -> None:
        cfg, p, ds, info = self.cfg, self.progress, self.ds, self.info
        row = {"epoch": p.epoch + 1, "train_loss": p.sums[0] / p.sums[3], "train_top1": p.sums[1] / p.sums[3],
               "train_top5": p.sums[2] / p.sums[3], "lr": self.lr, "seconds": p.epoch_seconds,
               "images_per_second": p.sums[3] / max(p.epoch_seconds, 1e-9)}
        if info.is_main and ds.val is not None:
            val = evaluate(self.final_model, ds.val.images, ds.val.labels, batch_size=cfg.eval_batch_size,
                           device=self.device, precision=cfg.precision, label_smoothing=cfg.label_smoothing,
                           tta=cfg.val_tta or cfg.tta)
            row.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
            if self.budget is not None:
                self.budget.after_validation(val["count"] / val["images_per_second"])
        barrier(info)
        p.history.append(row)
        self.report("epoch", {**row, "epochs": math.ceil(p.total_steps / self.steps_per_epoch)})
        p.epoch, p.step_in_epoch = p.epoch + 1, 0
        p.sums, p.epoch_seconds = [0.0, 0.0, 0.0, 0.0], 0.0
        p.elapsed = time.perf_counter() - self.run_start
        if info.is_main:
            self.folder.write_history(p.history, CSV_COLUMNS)
            plot_curves(p.history, self.folder.curves,
                        title=f"{self.model.variant} on {ds.display_name} ({cfg.recipe})")
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    self.writer.add_scalar(f"epoch/{key}", value, p.epoch)
            self.writer.flush()
            if row.get("val_top1", -1.0) > p.best_top1:
                p.best_top1 = row["val_top1"]
                self.checkpoint("checkpoint-best.pt")
            self.checkpoint("checkpoint-last.pt")

    @property
    def final_model(self) -> nn.Module:
        """What is evaluated and saved: the EMA of the weights when EMA is on, else the weights."""
        return self.ema.module if self.ema is not None else self.model

    # ---- the final model: saved in the Hugging Face layout, evaluated on the test split, reported
    def finish(self) -> RunResult:
        cfg, p, ds, folder = self.cfg, self.progress, self.ds, self.folder
        final, test = self.final_model, {}
        if self.info.is_main:
            save_model(final, folder.path)
            test = evaluate(final, ds.test.images, ds.test.labels, batch_size=cfg.eval_batch_size,
                            device=self.device, precision=cfg.precision, label_smoothing=cfg.label_smoothing,
                            tta=cfg.tta, coarse_labels=ds.test.coarse_labels, coarse_names=ds.coarse_classes)
            write_model_card(folder.path, run_name=folder.path.name, model=final, dataset=ds.display_name,
                             dataset_id=cfg.dataset, test_metrics=test, config=cfg.to_dict(), parameters=self.params,
                             command=p.commands[0], continued=p.commands[1:], epochs=len(p.history),
                             steps=p.global_step,
                             evaluation=describe_tta(cfg.tta) if cfg.tta != "none" else "")
            summary = {"run_dir": str(folder), "model": self.model.variant, "registered_model": cfg.model,
                       "parameters": self.params, "epochs": len(p.history), "steps": p.global_step,
                       "train_seconds": round(p.elapsed, 1),
                       "test": {k: v for k, v in test.items() if k != "per_coarse"}}
            folder.write_results({**summary, "test": test, "commands": p.commands})
            self.writer.add_scalar("test/top1", test["top1"], p.global_step)
            self.writer.add_scalar("test/top5", test["top5"], p.global_step)
            self.writer.close()
            self.report("done", summary)
        barrier(self.info)
        return RunResult(run_dir=folder.path, test=test, history=p.history)
