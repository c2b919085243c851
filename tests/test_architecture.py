"""The package map's rules (docs/architecture.md), checked on the source: who may import whom, and who
may talk to people."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "eanet"

# package -> eanet packages it must never import (directly or through a module of its own)
FORBIDDEN = {
    "layers": {"models", "data", "augment", "train", "cli", "hub", "export", "evaluate", "predict", "run_folder"},
    "models": {"data", "augment", "train", "cli", "hub", "export", "evaluate", "predict", "run_folder"},
    "data": {"layers", "models", "train", "cli", "augment", "hub", "export"},
    "augment": {"layers", "models", "train", "cli", "hub", "export"},
    "train": {"cli"},
    "hub": {"layers", "data", "augment", "train", "cli", "evaluate", "predict", "export"},
    "export": {"layers", "data", "augment", "train", "cli", "evaluate", "predict", "hub"},
}
TALKING = {"print", "input"}  # builtins that talk to people
TALKING_MODULES = {"tqdm", "click", "rich"}


def modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        yield parts[0], path, ast.parse(path.read_text())


def imported(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_follow_the_layering(package):
    bad = []
    for top, path, tree in modules():
        if top != package:
            continue
        for name in imported(tree):
            parts = name.split(".")
            if parts[0] == "eanet" and len(parts) > 1 and parts[1] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, bad


def test_only_the_command_line_talks_to_people():
    bad = []
    for top, path, tree in modules():
        if top in ("cli", "__main__"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TALKING:
                bad.append(f"{path.relative_to(SRC)}:{node.lineno} calls {node.func.id}()")
        bad += [f"{path.relative_to(SRC)} imports {name}" for name in imported(tree)
                if name.split(".")[0] in TALKING_MODULES]
    assert not bad, bad


def test_starting_is_cheap():
    """``import eanet`` and ``eanet --help`` load no PyTorch (the package's names load their modules on first
    use, the command list comes from ``eanet.cli.COMMANDS``), and the layers load no ``torch._dynamo`` (1-2 s
    of every command's start) until something compiles."""
    probe = textwrap.dedent("""
        import contextlib, io, sys
        import eanet
        assert "torch" not in sys.modules, "import eanet loaded torch"
        from eanet.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            main(["--help"])
        assert "train" in out.getvalue() and "torch" not in sys.modules, "eanet --help loaded torch"
        import eanet.layers
        assert "torch" in sys.modules and "torch._dynamo" not in sys.modules, "eanet.layers loaded torch._dynamo"
        assert eanet.create_model is eanet.models.create_model
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
