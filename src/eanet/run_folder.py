"""The run folder: its layout, who may write it, and reading it back.

::

    runs/<recipe>-<variant>-s<seed>/
      .eanet-run             marks the folder as an eanet run (eanet never writes into a folder without it)
      .lock                  held (flock) by the one process writing the folder
      config.yaml            the resolved configuration (every field)
      metrics.csv            one row per epoch: train/val loss, top-1, top-5, lr, seconds, images/s
      tensorboard/           TensorBoard event files
      curves.png             the loss plot with the accuracy curves beside it
      checkpoint-last.pt     full state for --resume (written atomically, also within epochs)
      checkpoint-best.pt     the best validation top-1 so far
      model.safetensors      final weights (EMA weights when EMA is on)
      config.json            the model's configuration, its architecture and variant name
      README.md              model card whose model-index holds the measured test metrics
      results.json           the test metrics and run summary

Rules: one writer at a time (an exclusive ``flock`` on ``.lock``, released by the kernel when the
process dies, so a killed run's folder is taken over by the next one); a folder that holds files but
no ``.eanet-run`` is never written into; a folder holding a run is continued only with ``--resume``;
temporary files a killed writer left are removed by the next writer.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import yaml

from eanet.errors import EanetError, one_line
from eanet.fileio import atomic_write_text, remove_leftovers

__all__ = ["RunFolder", "MARKER"]

MARKER = ".eanet-run"
LOCK = ".lock"
FORMAT = 1


class RunFolder:
    """One run folder. Paths are attributes; :meth:`claim_new` / :meth:`claim_existing` make this process
    its only writer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    # ---- the files
    config_yaml = property(lambda self: self.path / "config.yaml")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    curves = property(lambda self: self.path / "curves.png")
    tensorboard = property(lambda self: self.path / "tensorboard")
    checkpoint_last = property(lambda self: self.path / "checkpoint-last.pt")
    checkpoint_best = property(lambda self: self.path / "checkpoint-best.pt")
    results_json = property(lambda self: self.path / "results.json")
    card = property(lambda self: self.path / "README.md")

    def __str__(self) -> str:
        return str(self.path)

    # ---- what is there
    def is_run(self) -> bool:
        """Written by eanet: the marker, or (folders from before the marker) a config and a checkpoint."""
        return (self.path / MARKER).is_file() or (self.config_yaml.is_file() and self.checkpoint_last.is_file())

    def has_files(self) -> bool:
        try:
            return self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())
        except OSError as exc:
            raise EanetError(f"cannot read {self.path}: {exc.strerror or one_line(exc)}") from None

    def check_new(self) -> None:
        """Refuse to start a new run here when the folder holds anything that is not a restartable eanet run,
        or when another process writes it."""
        if (self.path / LOCK).is_file():  # a live writer first: that is what the user needs to know
            self._lock(record=False)
            self.release()
        self._refuse_taken()

    def _refuse_taken(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise EanetError(f"{self.path} exists and is not a folder")
        if not self.has_files():
            return
        if not self.is_run():
            raise EanetError(f"{self.path} is not empty and is not an eanet run folder: eanet does not write "
                             "into it; give --out a new or empty folder")
        if self.checkpoint_last.is_file():
            raise EanetError(f"{self.path} already holds a run: continue it with --resume {self.path} "
                             "or give --out another folder")
        if self.results_json.is_file():
            raise EanetError(f"{self.path} already holds a finished run; give --out another folder")

    # ---- claiming the folder
    def claim_new(self) -> None:
        """Create (or take over an unfinished start of) the folder as a new run's only writer."""
        self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self.check_new_locked()
            atomic_write_text(self.path / MARKER, json.dumps({"format": FORMAT}) + "\n")
        except BaseException:
            self.release()
            raise

    def check_new_locked(self) -> None:
        """Under the lock: a start that left files but no checkpoint is cleared; anything else stays refused."""
        self._refuse_taken()
        remove_leftovers(self.path)
        for name in ("config.yaml", "metrics.csv", "curves.png", "checkpoint-best.pt"):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.tensorboard, ignore_errors=True)

    def claim_existing(self) -> None:
        """Become the writer of an existing run folder (``--resume``), clearing a killed writer's leftovers."""
        if not self.path.is_dir():
            raise EanetError(f"no run folder {self.path}")
        if not self.is_run():
            raise EanetError(f"{self.path} is not an eanet run folder (no {MARKER}, or no config.yaml and "
                             "checkpoint-last.pt)")
        self._lock()
        remove_leftovers(self.path)
        shutil.rmtree(self.path / ".model-tmp", ignore_errors=True)
        if not (self.path / MARKER).is_file():
            atomic_write_text(self.path / MARKER, json.dumps({"format": FORMAT}) + "\n")

    def _lock(self, *, record: bool = True) -> None:
        """Take the folder's flock (``record``: and write this process's pid into ``.lock``)."""
        import fcntl

        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EanetError(f"{self.path} is being written by another eanet process (pid {holder}); "
                             "wait for it to finish or give --out another folder") from None
        if record:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # ---- reading and writing its files
    def read_config(self) -> dict:
        """``config.yaml`` as a mapping (its values are checked by :class:`~eanet.train.config.TrainConfig`)."""
        if not self.config_yaml.is_file():
            raise EanetError(f"{self.path} is not a run folder (no config.yaml)")
        try:
            data = yaml.safe_load(self.config_yaml.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise EanetError(f"cannot read {self.config_yaml}: {one_line(exc)}") from None
        if not isinstance(data, dict):
            raise EanetError(f"{self.config_yaml} must be a mapping of field: value, got "
                             f"{'an empty file' if data is None else type(data).__name__}")
        return data

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_yaml, yaml.safe_dump(config, sort_keys=False))

    def read_results(self) -> dict:
        if not self.results_json.is_file():
            raise EanetError(f"{self.path} is not a finished run (no results.json)")
        try:
            data = json.loads(self.results_json.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EanetError(f"cannot read {self.results_json}: {one_line(exc)}") from None
        if not isinstance(data, dict) or not isinstance(data.get("test"), dict):
            raise EanetError(f"{self.results_json} is not an eanet results file")
        return data

    def write_results(self, results: dict) -> None:
        atomic_write_text(self.results_json, json.dumps(results, indent=2) + "\n")

    def read_history(self) -> list[dict]:
        """``metrics.csv`` as rows of floats (``None`` where a value is empty)."""
        try:
            with self.metrics_csv.open() as fh:
                return [{k: float(v) if v not in ("", None) else None for k, v in row.items()}
                        for row in csv.DictReader(fh)]
        except (OSError, ValueError, csv.Error) as exc:
            raise EanetError(f"cannot read {self.metrics_csv}: {one_line(exc)}") from None

    def write_history(self, history: list[dict], columns: list[str]) -> None:
        lines = [",".join(columns)]
        for row in history:
            lines.append(",".join("" if row.get(c) is None else f"{row[c]:.6g}" for c in columns))
        atomic_write_text(self.metrics_csv, "\n".join(lines) + "\n")
