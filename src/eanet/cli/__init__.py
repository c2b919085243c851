"""The ``eanet`` command line.

Each sub-command lives in its own module of this package and is attached to the group here.
Every error becomes one line on stderr and exit status 1: an :class:`~eanet.errors.EanetError` as its
message, an ``OSError`` (a full disk, a missing file) as the system's words and the file, anything
unforeseen as its type and first line (``EANET_DEBUG=1`` re-raises it with the traceback).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from eanet.cpu_memory import keep_freed_memory
from eanet.errors import EanetError, Interrupted, one_line

# (module, attribute, summary) of every sub-command. A command's module is imported when the command runs;
# `eanet --help` lists the summaries from here, so it loads no PyTorch and answers at once.
COMMANDS = {
    "models": ("eanet.cli.models", "models_cmd", "the registered models: parameters, multiply-adds"),
    "summary": ("eanet.cli.models", "summary_cmd", "a model's layer table"),
    "import-keras": ("eanet.cli.models", "import_keras_cmd", "weights saved by the Keras example's code"),
    "data": ("eanet.cli.data", "data_group", "download and verify datasets"),
    "train": ("eanet.cli.train", "train_cmd", "train a model from a recipe; flags win"),
    "evaluate": ("eanet.cli.evaluate", "evaluate_cmd", "loss, top-1 and top-5 of a run or saved model"),
    "predict": ("eanet.cli.predict", "predict_cmd", "the top-5 classes of image files"),
    "attention": ("eanet.cli.attention", "attention_cmd", "the memory units' attention maps, overlaid on images"),
    "push": ("eanet.cli.push", "push_cmd", "publish a run on the Hugging Face Hub"),
    "serve": ("eanet.cli.serve", "serve_cmd", "the web demo of a saved model"),
    "compare": ("eanet.cli.compare", "compare_cmd", "runs side by side: one table, one overlay plot"),
    "export": ("eanet.cli.export", "export_cmd", "a saved model as ONNX, checked with ONNX Runtime"),
    "benchmark": ("eanet.cli.benchmark", "benchmark_cmd", "training and inference img/s; --scaling: cost against N"),
}


def summary(name: str) -> str:
    """The one-line summary of command ``name``: its ``short_help``, and its line in ``eanet --help``."""
    return COMMANDS[name][2]


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary(name)) for name in self.list_commands(ctx)])

    def get_command(self, ctx, name):
        return self._find(name)

    @staticmethod
    def _find(name):
        """The command ``name``; its module imports its optional dependencies only when it runs
        (:mod:`eanet.extras`), so a missing extra is said when the command is used, never hidden."""
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eanet")
def cli():
    """EANet: external attention for image classification."""


def main(argv=None):
    """Run the CLI; turn expected errors into one line and exit status 1."""
    keep_freed_memory()  # freed tensors stay in the process for the next step (eanet.cpu_memory)
    try:
        # the words this run was given, for what a run records of its command line (sys.argv when called as
        # a program; the list passed in when called from Python)
        words = list(sys.argv[1:] if argv is None else argv)
        status = cli.main(args=argv, prog_name="eanet", standalone_mode=False, obj={"argv": words})
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # a bad flag or value: one line too (`eanet CMD -h` shows the usage)
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except Interrupted as exc:  # a run stopped by Ctrl-C or SIGTERM, saved where it stopped
        click.echo(f"error: {exc}", err=True)
        sys.exit(128 + exc.signum)
    except EanetError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:  # a missing file, a full disk, a name too long...: the system's words and the file
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"error: {exc.strerror or one_line(exc)}{where}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - anything unforeseen is still one line; EANET_DEBUG=1 shows more
        if os.environ.get("EANET_DEBUG"):
            raise
        click.echo(f"error: unexpected {type(exc).__name__}: {one_line(exc)} (EANET_DEBUG=1 shows where)", err=True)
        sys.exit(1)
    if isinstance(status, int) and status:
        sys.exit(status)
