"""The training loop, top to bottom: data, model, optimizer, epochs, checkpoints, final report.

One function, :func:`train`, runs a :class:`~eanet.train.config.TrainConfig` and leaves a complete
run folder (its layout and rules: :mod:`eanet.run_folder`).

Exact resume: the data order depends only on (seed, epoch), and every other random number (dropout,
augmentation) comes from torch's global generator, whose state is saved in each checkpoint along
with the model, optimizer, EMA, schedule, and the running sums of the epoch in progress.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from eanet.augment import build_augmentation
from eanet.data import DeviceLoader, load_dataset
from eanet.errors import EanetError, one_line
from eanet.evaluate import TTA_VIEWS, describe_tta, evaluate, soft_cross_entropy, topk_correct
from eanet.hub import save_model, write_model_card
from eanet.models import create_model
from eanet.models.inspect import count_parameters
from eanet.models.registry import variant_label
from eanet.plots import plot_curves
from eanet.run_folder import RunFolder
from eanet.train.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from eanet.train.config import TrainConfig
from eanet.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    cleanup,
    pick_device,
    setup_distributed,
)
from eanet.train.resolution import ResolutionSchedule, fit_steps_to_budget, resize_batch, time_forward_backward
from eanet.train.schedule import learning_rate

__all__ = ["train", "RunResult", "CSV_COLUMNS", "default_run_dir"]

CSV_COLUMNS = ["epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
               "lr", "seconds", "images_per_second"]
WARMUP_STEPS, CALIBRATION_STEPS = 5, 10  # --time-budget: steps skipped, then steps timed, to fit the schedule
PROVISIONAL_EPOCHS = 16  # epochs: null with a time budget: the schedule's length until the budget fits it


@dataclass
class RunResult:
    run_dir: Path
    test: dict
    history: list = field(default_factory=list)


def default_run_dir(cfg: TrainConfig, root: str | Path = "runs") -> Path:
    """``runs/<recipe>-<variant>-s<seed>``, with ``-2``, ``-3``... when that folder is taken."""
    base = Path(root) / f"{Path(cfg.recipe).stem}-{variant_label(cfg.model, cfg.model_args)}-s{cfg.seed}"
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class Logger:
    """Progress bars and the per-epoch summary line (``progress``), nothing (``quiet``), or JSON lines."""

    def __init__(self, mode: str, enabled: bool):
        self.mode, self.enabled = mode, enabled

    def bar(self, total: int, initial: int, desc: str):
        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                    disable=not (self.enabled and self.mode == "progress"), file=sys.stderr)

    def info(self, text: str) -> None:
        if self.enabled and self.mode == "progress":
            tqdm.write(text, file=sys.stderr)

    def event(self, kind: str, payload: dict, text: str) -> None:
        if not self.enabled or self.mode == "quiet":
            return
        if self.mode == "jsonl":
            print(json.dumps({"event": kind, **payload}), flush=True)
        else:
            tqdm.write(text, file=sys.stdout)


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


def _summary_line(row: dict, epochs: int) -> str:
    text = (f"Epoch {row['epoch']}/{epochs} - {row['seconds']:.0f}s {row['images_per_second']:.0f} img/s - "
            f"loss: {row['train_loss']:.4f} - accuracy: {row['train_top1']:.4f} - "
            f"top-5-accuracy: {row['train_top5']:.4f}")
    if row.get("val_loss") is not None:
        text += (f" - val_loss: {row['val_loss']:.4f} - val_accuracy: {row['val_top1']:.4f} - "
                 f"val_top-5-accuracy: {row['val_top5']:.4f}")
    return text + f" - lr: {row['lr']:.2e}"


def train(cfg: TrainConfig, *, resume: str | Path | None = None, command: str = "") -> RunResult:
    """Run ``cfg`` (or continue the run in folder ``resume``) and return the run folder and test metrics."""
    cfg.validate()
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = setup_distributed(device)
    folder = RunFolder(resume if resume is not None else (cfg.out or default_run_dir(cfg)))
    try:
        return _train(cfg, device, dist_info, folder, resume=resume is not None, command=command)
    finally:
        folder.release()
        cleanup(dist_info)


def _train(cfg: TrainConfig, device: torch.device, info: DistInfo, folder: RunFolder, *, resume: bool,
           command: str) -> RunResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    log = Logger(cfg.log, info.is_main)
    run_dir = folder.path

    # ---- the run folder: checked now, created only once everything below has loaded (a start that fails
    # leaves nothing behind); when resuming, the saved state, checked against the configuration
    state = None
    if resume:
        if info.is_main:
            folder.claim_existing()
        state = load_checkpoint(folder.checkpoint_last)
        check_resumable(state, cfg, folder.checkpoint_last)
    elif info.is_main:
        folder.check_new()

    # ---- data, held as uint8 tensors on the training device
    torch.manual_seed(cfg.seed)
    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_fraction=cfg.val_fraction,
                      progress=cfg.log == "progress" and info.is_main)
    if ds.num_classes < 2:
        raise EanetError(f"{cfg.dataset} has {ds.num_classes} class: a classifier needs at least two")
    per_rank_batch = cfg.batch_size // info.world_size
    if per_rank_batch * info.world_size != cfg.batch_size:
        raise EanetError(f"batch size {cfg.batch_size} is not divisible by {info.world_size} processes")
    # one process keeps the seed's last partial batch; several drop it so every rank gets an equal share
    loader = DeviceLoader(ds.train, batch_size=cfg.batch_size, shuffle=True, drop_last=info.enabled, seed=cfg.seed,
                          device=device, rank=info.rank, world_size=info.world_size)
    steps_per_epoch = len(loader)
    augment = build_augmentation(cfg.augment, image_size=ds.train.images.shape[-1], num_classes=ds.num_classes,
                                 mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                                 mix_prob=cfg.mix_prob, erasing_prob=cfg.erasing_prob, **cfg.augment_args)

    # ---- model (input normalisation adapted like the seed's Normalization.adapt(x_train): all training
    # arrays, the held-out validation part included; no labels are involved)
    model = create_model(cfg.model, num_classes=ds.num_classes, img_size=ds.train.images.shape[-1],
                         class_names=list(ds.classes), **cfg.model_args)
    model.set_input_stats(*ds.channel_stats())
    model.to(device)
    params = count_parameters(model)
    variant = model.variant
    # fused: one kernel for all parameters instead of a loop of small ops (same update; ~4 ms less per
    # step on the CPU for the 1M-parameter recipe model, results/tuning.md)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay else None)
    forward = torch.compile(model) if cfg.compile else model
    if info.enabled:
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)

    # ---- schedule: total steps from epochs (or fitted to --time-budget after CALIBRATION_STEPS), and the
    # image size of each step (progressive resizing, eanet.train.resolution)
    native_size = ds.train.images.shape[-1]
    sizes = (ResolutionSchedule(cfg.resolution_schedule, native=native_size) if cfg.resolution_schedule
             else None)
    # the most steps the run may take: --epochs and --max-steps; a time budget fits the schedule below that
    step_cap = min(n for n in (cfg.epochs and cfg.epochs * steps_per_epoch, cfg.max_steps, 10**12) if n)
    total_steps = min(step_cap, (cfg.epochs or PROVISIONAL_EPOCHS) * steps_per_epoch)
    epoch, start_step, global_step, best_top1, history, elapsed = 0, 0, 0, -1.0, [], 0.0
    sums = [0.0, 0.0, 0.0, 0.0]  # loss * n, top-1 hits, top-5 hits, n of the epoch in progress
    epoch_seconds = 0.0
    calibrated = cfg.time_budget is None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise EanetError(f"{folder.checkpoint_last} does not fit this run's model and optimizer: "
                             f"{one_line(exc)}") from None
        epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        total_steps, best_top1, history = state["total_steps"], state["best_top1"], state["history"]
        sums, epoch_seconds, elapsed, calibrated = state["sums"], state["epoch_seconds"], state["elapsed"], True
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        log.info(f"resuming {run_dir} at epoch {epoch + 1}, step {start_step} of {steps_per_epoch}")
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        if not resume:
            folder.claim_new()
        folder.write_config(cfg.to_dict())

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=global_step if state else None)

    def checkpoint(path_name: str, step_in_epoch: int) -> None:
        save_checkpoint(run_dir / path_name, {
            "config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step, "total_steps": total_steps,
            "best_top1": best_top1, "history": history, "sums": sums, "epoch_seconds": epoch_seconds,
            "elapsed": elapsed, "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        })

    log.info(f"run folder {run_dir} | {variant} ({params:,} parameters) | {cfg.dataset}: "
             f"{len(ds.train):,} train, {len(ds.val) if ds.val is not None else 0:,} val, {len(ds.test):,} test "
             f"| {device} x{info.world_size} | {steps_per_epoch} steps/epoch")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    budget_seconds = cfg.time_budget * 60.0 if cfg.time_budget else None
    run_start = time.perf_counter() - elapsed
    calibration_start = None
    # the budget fit's cost model: a step at image size s costs forward_backward[s] + overhead seconds
    forward_backward = {native_size: 0.0}
    if budget_seconds is not None and sizes is not None:
        forward_backward = time_forward_backward(model, ds.train.images[:per_rank_batch].to(device), sizes.sizes,
                                                 autocast=autocast)

    def mean_forward_backward(first: int, last: int, total: int) -> float:
        """Mean forward+backward seconds (by image size) of steps ``[first, last)`` of ``total``."""
        if sizes is None or last <= first:
            return 0.0
        return sum(forward_backward[sizes.size_at(s, total)] for s in range(first, last)) / (last - first)

    def refit(seconds_left: float, overhead: float) -> int:
        """Total steps that fit in ``seconds_left`` from ``global_step`` on (same on every process)."""
        overhead = max(overhead, 0.0)

        def seconds_for(total: int) -> float:
            counts = sizes.step_counts(global_step, total) if sizes else {native_size: total - global_step}
            return sum(n * (forward_backward[size] + overhead) for size, n in counts.items())

        steps = fit_steps_to_budget(seconds_left, global_step, seconds_for, step_cap)
        return int(broadcast_from_main([steps], info, device)[0])
    lr = cfg.lr
    stop = False
    val_tta = cfg.val_tta or cfg.tta  # per-epoch validation's test-time augmentation; the test split gets cfg.tta
    test_seconds = 0.0  # the final test evaluation's expected cost, kept out of the budget's training time

    # ---- the epochs
    while epoch * steps_per_epoch < total_steps and not stop:
        model.train()
        epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        bar = log.bar(epoch_steps, start_step, f"epoch {epoch + 1}")
        tick = last_checkpoint = epoch_start = time.perf_counter()
        epoch_first_step, val_seconds = global_step, 0.0
        for step, (images, labels) in enumerate(loader.epoch(epoch, start_step=start_step), start=start_step):
            if step >= epoch_steps:
                break
            lr = learning_rate(global_step, base_lr=cfg.lr, total_steps=total_steps, schedule=cfg.schedule,
                               warmup_steps=cfg.warmup_steps(total_steps, steps_per_epoch), min_lr=cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, targets = augment(images, labels)
            if sizes is not None:
                inputs = resize_batch(inputs, sizes.size_at(global_step, total_steps))
            with autocast:
                logits = forward(inputs)
            loss = soft_cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                last = (f"the last good checkpoint is {folder.checkpoint_last}" if folder.checkpoint_last.is_file()
                        else "no checkpoint was written yet")
                raise EanetError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step}: training "
                                 f"stopped; {last}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            global_step += 1

            # running metrics of the epoch (summed over processes)
            top1, top5 = topk_correct(logits.detach(), labels)
            n = len(labels)
            batch_sums = all_reduce_sum([loss.item() * n, float(top1.sum()), float(top5.sum()), float(n)],
                                        info, device)
            sums = [a + b for a, b in zip(sums, batch_sums, strict=True)]
            now = time.perf_counter()
            epoch_seconds += now - tick
            tick, elapsed = now, now - run_start
            bar.update(1)
            bar.set_postfix(loss=f"{sums[0] / sums[3]:.3f}", acc=f"{sums[1] / sums[3]:.3f}",
                            img_s=f"{sums[3] / max(epoch_seconds, 1e-9):.0f}", refresh=False)
            if writer is not None and global_step % 50 == 0:
                writer.add_scalar("train/step_loss", loss.item(), global_step)

            # --time-budget: time CALIBRATION_STEPS steps after WARMUP_STEPS, then fit the schedule
            if budget_seconds is not None and not calibrated:
                if global_step == WARMUP_STEPS:
                    calibration_start = now
                elif global_step == WARMUP_STEPS + CALIBRATION_STEPS:
                    # first estimate: evaluation (forward only) costs about a third of a training step per image
                    per_step = (now - calibration_start) / CALIBRATION_STEPS
                    overhead = per_step - mean_forward_backward(global_step - CALIBRATION_STEPS, global_step,
                                                                total_steps)
                    full_size_step = overhead + forward_backward[native_size]
                    per_view = full_size_step / cfg.batch_size / 3
                    val_seconds = (len(ds.val) if ds.val is not None else 0) * per_view * len(TTA_VIEWS[val_tta])
                    test_seconds = len(ds.test) * per_view * len(TTA_VIEWS[cfg.tta])
                    total_steps = refit(budget_seconds - elapsed - test_seconds - 5.0,
                                        overhead + val_seconds / steps_per_epoch)
                    calibrated = True
                    epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
                    bar.total = epoch_steps
                    log.info(f"time budget {cfg.time_budget:g} min: {total_steps} steps "
                             f"({total_steps / steps_per_epoch:.1f} epochs)")
            if budget_seconds is not None and elapsed > budget_seconds * 0.97:
                stop = True  # out of time: finish now, leave the tail of the schedule unused
            if cfg.max_steps and global_step >= cfg.max_steps:
                stop = True
            if stop:
                break
            if info.is_main and now - last_checkpoint >= cfg.checkpoint_seconds and step + 1 < epoch_steps:
                checkpoint("checkpoint-last.pt", step + 1)
                last_checkpoint = time.perf_counter()
        bar.close()

        # ---- end of epoch: validate, record, checkpoint
        row = {"epoch": epoch + 1, "train_loss": sums[0] / sums[3], "train_top1": sums[1] / sums[3],
               "train_top5": sums[2] / sums[3], "lr": lr, "seconds": epoch_seconds,
               "images_per_second": sums[3] / max(epoch_seconds, 1e-9)}
        if info.is_main and ds.val is not None:
            val = evaluate(ema.module if ema is not None else model, ds.val.images, ds.val.labels,
                           batch_size=cfg.eval_batch_size, device=device, precision=cfg.precision,
                           label_smoothing=cfg.label_smoothing, tta=val_tta)
            row.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
            val_seconds = val["count"] / val["images_per_second"]
            test_seconds = val_seconds * len(ds.test) / len(ds.val) * len(TTA_VIEWS[cfg.tta]) / len(TTA_VIEWS[val_tta])
        barrier(info)
        history.append(row)
        log.event("epoch", row, _summary_line(row, math.ceil(total_steps / steps_per_epoch)))
        epoch, start_step = epoch + 1, 0
        sums, epoch_seconds = [0.0, 0.0, 0.0, 0.0], 0.0
        elapsed = time.perf_counter() - run_start
        if info.is_main:
            folder.write_history(history, CSV_COLUMNS)
            plot_curves(history, folder.curves, title=f"{variant} on {ds.display_name} ({cfg.recipe})")
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    writer.add_scalar(f"epoch/{key}", value, epoch)
            writer.flush()
            if row.get("val_top1", -1.0) > best_top1:
                best_top1 = row["val_top1"]
                checkpoint("checkpoint-best.pt", 0)
            checkpoint("checkpoint-last.pt", 0)
        if budget_seconds is not None and calibrated and not stop and global_step > epoch_first_step + 1:
            # refit after every epoch from its real cost per step, end-of-epoch work included
            per_step = (time.perf_counter() - epoch_start) / (global_step - epoch_first_step)
            if ds.val is None:
                test_seconds = 10 * per_step
            elapsed = time.perf_counter() - run_start
            overhead = per_step - mean_forward_backward(epoch_first_step, global_step, total_steps)
            total_steps = refit(budget_seconds - elapsed - test_seconds - 5.0, overhead)

    # ---- the final model: saved in the Hugging Face layout, evaluated on the test split
    final = ema.module if ema is not None else model
    test = {}
    if info.is_main:
        save_model(final, run_dir)
        test = evaluate(final, ds.test.images, ds.test.labels, batch_size=cfg.eval_batch_size, device=device,
                        precision=cfg.precision, label_smoothing=cfg.label_smoothing, tta=cfg.tta,
                        coarse_labels=ds.test.coarse_labels, coarse_names=ds.coarse_classes)
        write_model_card(run_dir, run_name=run_dir.name, model=final, dataset=ds.display_name,
                         dataset_id=cfg.dataset, test_metrics=test, config=cfg.to_dict(), parameters=params,
                         command=command or "eanet train", epochs=len(history), steps=global_step,
                         evaluation=describe_tta(cfg.tta) if cfg.tta != "none" else "")
        summary = {"run_dir": str(run_dir), "model": variant, "registered_model": cfg.model,
                   "parameters": params, "epochs": len(history), "steps": global_step,
                   "train_seconds": round(elapsed, 1), "test": {k: v for k, v in test.items() if k != "per_coarse"}}
        folder.write_results({**summary, "test": test})
        writer.add_scalar("test/top1", test["top1"], global_step)
        writer.add_scalar("test/top5", test["top5"], global_step)
        writer.close()
        log.event("done", summary, f"Test loss: {test['loss']:.2f}\nTest accuracy: {100 * test['top1']:.2f}%\n"
                                    f"Test top 5 accuracy: {100 * test['top5']:.2f}%\nRun folder: {run_dir}")
    barrier(info)
    return RunResult(run_dir=run_dir, test=test, history=history)
