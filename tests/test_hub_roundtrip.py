"""Publishing a run on the Hub and using a repository id in place of a folder, without a network: the
upload's exact calls and files through a stand-in for HfApi, the download through a cache folder laid out
as huggingface_hub lays it out, with HF_HUB_OFFLINE=1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from trainhelp import finished_run

from eanet.cli import main

EXPECTED = {"README.md", "config.json", "model.safetensors", "metrics.csv", "curves.png", "config.yaml"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("hub"))


class FakeApi:
    """Records what eanet asks of the Hub."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, *, operations, **kwargs):
        files = {}
        for op in operations:
            source = op.path_or_fileobj
            files[op.path_in_repo] = Path(source).read_bytes() if isinstance(source, str) else source
        self.calls.append(("create_commit", repo_id, {**kwargs, "files": files}))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def test_dry_run_lists_the_run_files_and_never_checkpoints(run, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("dry run contacted the Hub"))
    main(["push", str(run), "--repo-id", "me/eanet-tiny", "--dry-run"])
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    tensorboard = {n for n in listed if n.startswith("tensorboard/")}
    assert listed - tensorboard == EXPECTED and len(tensorboard) == 1
    assert not any("checkpoint" in n for n in listed)


def test_push_makes_these_calls_with_these_files(run, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub import ModelCard

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    main(["push", str(run), "--repo-id", "me/eanet-tiny", "--private", "--revision", "dev"])
    assert "https://huggingface.co/me/eanet-tiny/commit/abc" in capsys.readouterr().out
    (kind1, repo1, args1), (kind2, repo2, args2), (kind3, repo3, args3) = FakeApi.calls
    assert (kind1, repo1, args1) == ("create_repo", "me/eanet-tiny",
                                     {"private": True, "exist_ok": True, "repo_type": "model"})
    assert (kind2, repo2, args2) == ("create_branch", "me/eanet-tiny",
                                     {"branch": "dev", "exist_ok": True, "repo_type": "model"})
    assert kind3 == "create_commit" and args3["revision"] == "dev"
    files = args3["files"]
    assert {n for n in files if not n.startswith("tensorboard/")} == EXPECTED
    for name in EXPECTED:
        assert files[name] == (run / name).read_bytes(), name  # the run's own card, not the mixin's
    card = ModelCard(files["README.md"].decode())
    assert [r.metric_name for r in card.data.eval_results] == ["Top-1 accuracy", "Top-5 accuracy"]


def test_push_without_a_token_is_one_line(run, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(SystemExit):
        main(["push", str(run), "--repo-id", "me/eanet-tiny"])
    assert capsys.readouterr().err.strip() == "error: no Hugging Face token: set HF_TOKEN or run `hf auth login`"


def _cache(tmp_path, run, repo="me/eanet-tiny"):
    """The Hugging Face cache layout: models--me--eanet-tiny/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = tmp_path / "hf" / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "README.md", "config.yaml"):
        (snapshot / name).write_bytes((run / name).read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return tmp_path / "hf"


def test_a_repository_id_works_offline_from_the_cache(run, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 30), (200, 40, 90)).save(image)
    env = dict(os.environ, HF_HUB_CACHE=str(_cache(tmp_path, run)), HF_HUB_OFFLINE="1")

    def eanet(*args):
        return subprocess.run([sys.executable, "-m", "eanet", *args], env=env, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)

    local = eanet("predict", str(run), str(image), "--json")
    hub = eanet("predict", "me/eanet-tiny", str(image), "--json")
    assert local.returncode == 0 and hub.returncode == 0, hub.stderr
    assert json.loads(hub.stdout)[0]["predictions"] == json.loads(local.stdout)[0]["predictions"]
    loaded = subprocess.run([sys.executable, "-c", "import eanet; print(eanet.load_model('me/eanet-tiny').variant)"],
                            env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert loaded.stdout.strip() == "eanet_keras-custom", loaded.stderr
    missing = eanet("predict", "me/not-cached", str(image))
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "neither a local folder nor in the Hugging Face cache" in missing.stderr


def test_a_space_push_adds_the_app_and_the_front_matter(run, capsys, monkeypatch):
    import huggingface_hub
    import yaml

    main(["push", str(run), "--repo-id", "me/eanet-demo", "--space", "--dry-run"])
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    assert {"app.py", "requirements.txt"} <= listed and listed >= EXPECTED
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    main(["push", str(run), "--repo-id", "me/eanet-demo", "--space"])
    (_, _, repo_args), (_, _, commit) = FakeApi.calls
    assert repo_args["repo_type"] == "space" and repo_args["space_sdk"] == "gradio"
    front = yaml.safe_load(commit["files"]["README.md"].decode().split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["model-index"]
    assert b"eanet.load_model(\".\")" in commit["files"]["app.py"]
    compile(commit["files"]["app.py"], "app.py", "exec")


def test_a_space_push_of_a_card_that_is_not_text_is_one_line(run, tmp_path, capsys):
    damaged = tmp_path / "run"
    damaged.mkdir()
    for path in run.iterdir():
        if path.is_file():
            (damaged / path.name).write_bytes(path.read_bytes())
    (damaged / "README.md").write_bytes(b"\x08\x0a\x12\x07pytorch\x9e\x88")  # e.g. an ONNX file saved under that name
    with pytest.raises(SystemExit):
        main(["push", str(damaged), "--repo-id", "me/eanet-tiny", "--space", "--dry-run"])
    assert capsys.readouterr().err.strip() == (f"error: {damaged / 'README.md'} is not UTF-8 text, so not a model "
                                               "card: the Space needs the run's card")
