"""What a training run shows on the terminal: the trainer's reports as progress bars and summary lines
(``progress``), one JSON object per epoch and at the end (``jsonl``), or nothing (``quiet``)."""

from __future__ import annotations

import json
import sys

from tqdm import tqdm

__all__ = ["ConsoleReport", "bars", "epoch_line"]


def bars(**options) -> tqdm:
    """The progress-bar factory the library's data functions take (:mod:`eanet.progress`): tqdm on stderr."""
    return tqdm(leave=False, dynamic_ncols=True, file=sys.stderr, **options)


def epoch_line(row: dict, epochs: int) -> str:
    """An epoch as Keras prints it: time, images/s, loss and accuracies, validation's too, the learning rate."""
    text = (f"Epoch {row['epoch']}/{epochs} - {row['seconds']:.0f}s {row['images_per_second']:.0f} img/s - "
            f"loss: {row['train_loss']:.4f} - accuracy: {row['train_top1']:.4f} - "
            f"top-5-accuracy: {row['train_top5']:.4f}")
    if row.get("val_loss") is not None:
        text += (f" - val_loss: {row['val_loss']:.4f} - val_accuracy: {row['val_top1']:.4f} - "
                 f"val_top-5-accuracy: {row['val_top5']:.4f}")
    return text + f" - lr: {row['lr']:.2e}"


class ConsoleReport:
    """``report(kind, payload)`` for :func:`eanet.train.trainer.train`, in one of three modes."""

    def __init__(self, mode: str):
        self.mode, self.bar = mode, None
        self.bars = bars if mode == "progress" else None  # for the data loading's own bars

    def __call__(self, kind: str, payload: dict) -> None:
        if self.mode == "jsonl":
            if kind in ("epoch", "done", "finished"):
                row = {k: v for k, v in payload.items() if k != "epochs"}
                print(json.dumps({"event": kind, **row}), flush=True)
        elif self.mode == "progress":
            getattr(self, f"_{kind}", lambda payload: None)(payload)

    def close(self) -> None:
        """Clear an epoch's bar left open by a run that stopped inside the epoch (before its error line)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _info(self, text: str) -> None:
        tqdm.write(text, file=sys.stderr)

    def _start(self, p: dict) -> None:
        self._info(f"run folder {p['run_dir']} | {p['model']} ({p['parameters']:,} parameters) | {p['dataset']}: "
                   f"{p['train']:,} train, {p['val']:,} val, {p['test']:,} test | {p['device']} x{p['processes']} | "
                   f"{p['steps_per_epoch']} steps/epoch")

    def _init(self, p: dict) -> None:
        head = f"a new head for its {p['classes']} classes" if p["new_head"] else "its head too (the same classes)"
        self._info(f"starting from {p['source']}: {p['tensors']} tensors, {head}")

    def _resume(self, p: dict) -> None:
        self._info(f"resuming {p['run_dir']} at epoch {p['epoch']}, step {p['step']} of {p['steps_per_epoch']}")

    def _budget(self, p: dict) -> None:
        if self.bar is not None:
            self.bar.total = p["epoch_steps"]
        self._info(f"time budget {p['minutes']:g} min: {p['total_steps']} steps ({p['epochs']:.1f} epochs)")

    def _epoch_start(self, p: dict) -> None:
        self.bar = tqdm(total=p["steps"], initial=p["initial"], desc=f"epoch {p['epoch']}", leave=False,
                        dynamic_ncols=True, file=sys.stderr)

    def _step(self, p: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{p['loss']:.3f}", acc=f"{p['top1']:.3f}",
                                 img_s=f"{p['images_per_second']:.0f}", refresh=False)

    def _epoch(self, p: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        tqdm.write(epoch_line(p, p["epochs"]), file=sys.stdout)

    def _finished(self, p: dict) -> None:
        test = p["test"]
        self._info(f"{p['run_dir']} is finished (test top-1 {100 * test['top1']:.2f}%, top-5 "
                   f"{100 * test['top5']:.2f}%): nothing to continue, nothing changed")

    def _done(self, p: dict) -> None:
        test = p["test"]
        tqdm.write(f"Test loss: {test['loss']:.2f}\nTest accuracy: {100 * test['top1']:.2f}%\n"
                   f"Test top 5 accuracy: {100 * test['top5']:.2f}%\nRun folder: {p['run_dir']}", file=sys.stdout)
