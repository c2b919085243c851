"""Publishing a finished run on the Hugging Face Hub: its own card, the model, the curves and the logs.

What goes: the run's model card (``README.md``, with the measured test metrics), ``config.json``,
``model.safetensors``, ``metrics.csv``, ``curves.png``, ``config.yaml`` and the TensorBoard event files.
Never the checkpoints (they hold the optimizer state, and are only for ``--resume``). The token comes
from where ``huggingface_hub`` looks (``HF_TOKEN``, or ``hf auth login``).
"""

from __future__ import annotations

from pathlib import Path

from eanet.errors import EanetError, one_line
from eanet.run_folder import RunFolder

__all__ = ["PUBLISHED", "files_to_publish", "push_run", "space_files"]

PUBLISHED = ("README.md", "config.json", "model.safetensors", "metrics.csv", "curves.png", "config.yaml")
REQUIRED = ("README.md", "config.json", "model.safetensors")


def files_to_publish(run: str | Path) -> list[tuple[Path, str]]:
    """``(local file, path in the repository)`` for every file a push of ``run`` uploads."""
    folder = RunFolder(run)
    if not folder.path.is_dir():
        raise EanetError(f"no run folder {folder.path}")
    missing = [name for name in REQUIRED if not (folder.path / name).is_file()]
    if missing:
        raise EanetError(f"{folder.path} is not a finished run: it has no {', '.join(missing)}")
    files = [(folder.path / name, name) for name in PUBLISHED if (folder.path / name).is_file()]
    if folder.tensorboard.is_dir():
        files += [(p, p.relative_to(folder.path).as_posix()) for p in sorted(folder.tensorboard.rglob("*"))
                  if p.is_file()]
    return files


def space_files(run: str | Path, requirement: str = "eanet[demo]") -> list[tuple[bytes, str]]:
    """What turns the pushed repository into a Gradio Space: ``app.py`` (the model is the Space's own files),
    ``requirements.txt``, and the run's card with the Space's front matter (``sdk: gradio``) added."""
    from eanet.demo import SPACE_APP

    try:
        card = (Path(run) / "README.md").read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise EanetError(f"{Path(run) / 'README.md'} is not UTF-8 text, so not a model card: the Space needs the "
                         "run's card") from None
    head, sep, rest = card.partition("---\n")
    front = "sdk: gradio\napp_file: app.py\npinned: false\n"
    card = f"---\n{front}{rest}" if head == "" and sep else f"---\n{front}---\n{card}"
    return [(SPACE_APP.encode(), "app.py"), (f"{requirement}\n".encode(), "requirements.txt"),
            (card.encode(), "README.md")]


def push_run(run: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
             api=None, space: bool = False, requirement: str = "eanet[demo]") -> str:
    """Create ``repo_id`` if needed and upload the run's files in one commit; returns the commit's URL.

    ``space``: push to a Gradio Space instead of a model repository, with :func:`space_files` added.
    ``api`` is an ``huggingface_hub.HfApi`` (one is made when None)."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    files = files_to_publish(run)
    extra = space_files(run, requirement) if space else []
    files = [(path, name) for path, name in files if name not in {n for _, n in extra}]
    repo_type = "space" if space else "model"
    if api is None:
        if get_token() is None:
            raise EanetError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
        api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type,
                        **({"space_sdk": "gradio"} if space else {}))
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for path, name in files]
        operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for content, name in extra]
        commit = api.create_commit(repo_id, operations=operations, revision=revision, repo_type=repo_type,
                                   commit_message=f"eanet push of {Path(run).name}")
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise EanetError(f"cannot push to {repo_id}: {one_line(exc)}") from None
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
