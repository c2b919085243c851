"""``eanet push RUN --repo-id NAME``: publish a finished run on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import click

from eanet.cli import summary


@click.command("push", short_help=summary("push"))
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--repo-id", required=True, help="the Hub repository, user/name (created when missing)")
@click.option("--private", is_flag=True, help="create the repository private")
@click.option("--revision", help="push to this branch (created when missing) instead of main")
@click.option("--dry-run", is_flag=True, help="list what would be uploaded and stop")
@click.option("--space", is_flag=True, help="push a Gradio Space (the demo, with app.py) instead of a model repository")
@click.option("--requirement", default="eanet[demo]", show_default=True,
              help="--space: how the Space installs eanet (a pip requirement, e.g. a git URL)")
def push_cmd(run: Path, repo_id: str, private: bool, revision: str | None, dry_run: bool, space: bool,
             requirement: str) -> None:
    """Upload RUN's model card (with its measured metrics), config.json, model.safetensors, metrics.csv,
    curves.png, config.yaml and TensorBoard events to the Hub; never its checkpoints. The token comes from
    HF_TOKEN or `hf auth login`."""
    from eanet.errors import EanetError
    from eanet.hub import REPO_ID
    from eanet.publish import files_to_publish, push_run, space_files

    if not REPO_ID.match(repo_id):
        raise EanetError(f"--repo-id must look like user/name, got {repo_id!r}")
    extra = space_files(run, requirement) if space else []
    replaced = {name for _, name in extra}
    files = [(path.stat().st_size, name) for path, name in files_to_publish(run) if name not in replaced]
    files += [(len(content), name) for content, name in extra]
    if dry_run:
        kind = "Space" if space else "model repository"
        click.echo(f"would push to the {kind} {repo_id}{f' (branch {revision})' if revision else ''}:")
        for size, name in files:
            click.echo(f"  {name}  ({size:,} bytes)")
        return
    url = push_run(run, repo_id, private=private, revision=revision, space=space, requirement=requirement)
    click.echo(f"pushed {len(files)} files of {run} to {repo_id}: {url}")
