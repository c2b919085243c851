"""Progressive resizing: the schedule, the budget fit's cost model, the model on smaller images, a run."""

import json
import time

import pytest
import torch
from trainhelp import TINY

import eanet
from eanet import create_model
from eanet.cli import main
from eanet.train.budget import fit_steps_to_budget
from eanet.train.checkpoint import load_checkpoint
from eanet.train.resolution import ResolutionSchedule, time_forward_backward

PHASES = [[0.0, 16], [0.3, 24], [0.6, 32]]


def test_schedule_gives_each_step_its_phase_size():
    sched = ResolutionSchedule(PHASES, native=32)
    sizes = [sched.size_at(s, 10) for s in range(10)]
    assert sizes == [16, 16, 16, 24, 24, 24, 32, 32, 32, 32]
    assert sched.step_counts(0, 10) == {16: 3, 24: 3, 32: 4}
    assert sched.step_counts(5, 10) == {16: 0, 24: 1, 32: 4}
    assert sched.sizes == [16, 24, 32]
    assert ResolutionSchedule([[0, 16]], native=32).sizes == [16, 32]  # the images' own size for evaluation


@pytest.mark.parametrize("phases, message", [
    ([[0.5, 16], [0.7, 32]], "fraction 0"),
    ([[0.0, 16], [0.6, 24], [0.4, 32]], "increase"),
    ([[0.0, 16], [1.0, 32]], "below 1"),
    ([[0.0, 48]], "between 1"),
    ([[0.0]], "pairs"),
    ("16", "pairs"),
])
def test_schedule_rejects_malformed_phases(phases, message):
    with pytest.raises(eanet.EanetError, match=message):
        ResolutionSchedule(phases, native=32)


def test_fit_finds_the_most_steps_that_fit():
    def seconds_for(total):  # steps from 100 on: 2 s each
        return 2.0 * (total - 100)

    assert fit_steps_to_budget(50.0, 100, seconds_for) == 125
    assert fit_steps_to_budget(51.9, 100, seconds_for) == 125
    assert fit_steps_to_budget(50.0, 100, seconds_for, max_steps=110) == 110
    assert fit_steps_to_budget(-5.0, 100, seconds_for) == 101  # out of time: at least one more step
    # with cheap small-image steps early on, more steps fit than at the full size alone
    sched = ResolutionSchedule(PHASES, native=32)
    cost = {16: 0.25, 24: 0.5, 32: 1.0}

    def mixed(total):
        return sum(n * cost[size] for size, n in sched.step_counts(0, total).items())

    fitted = fit_steps_to_budget(100.0, 0, mixed)
    assert fitted > 100 and mixed(fitted) <= 100.0 < mixed(fitted + 2)


def test_model_runs_on_smaller_images_with_a_resized_position_embedding():
    torch.manual_seed(0)
    model = create_model("eanet_keras", stem="conv", stem_channels=[8, 16], stem_strides=[2, 2], embed_dim=16,
                         depth=1, num_heads=4, mlp_dim=16)
    assert model.position_embedding(32, 32) is model.pos_embed  # the learned one, untouched, at 32 px
    small = model.position_embedding(16, 16)
    assert small.shape == (1, 16, 16)
    # each 2x2 block of the 8x8 grid averages into one cell of the 4x4 grid (bilinear, antialiased)
    grid = model.pos_embed.detach().reshape(8, 8, 16)
    torch.testing.assert_close(small[0, 0], grid[:2, :2].mean(dim=(0, 1)), atol=0.02, rtol=0)
    logits = model(torch.rand(2, 3, 16, 16) * 255)
    logits.sum().backward()
    assert logits.shape == (2, 100) and model.pos_embed.grad.abs().sum() > 0


def test_timing_the_sizes_leaves_no_trace():
    torch.manual_seed(0)
    model = create_model("eanet_keras", embed_dim=16, depth=1, num_heads=4, mlp_dim=16, stem="conv",
                         stem_channels=[8, 16], stem_strides=[2, 2])  # BatchNorm and dropout inside
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    rng = torch.get_rng_state()
    seconds = time_forward_backward(model.train(), images, [16, 32], autocast=torch.autocast("cpu", enabled=False),
                                    repeats=1)
    assert set(seconds) == {16, 32} and all(t > 0 for t in seconds.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_training_runs_the_phases_in_order(tmp_path, monkeypatch):
    import eanet.train.trainer as trainer

    seen = []
    real = trainer.resize_batch

    def spy(images, size):
        out = real(images, size)
        seen.append(out.shape[-1])
        return out

    monkeypatch.setattr(trainer, "resize_batch", spy)
    monkeypatch.setenv("EANET_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    main(["train", *TINY, "--epochs", "2", "--out", str(run), "--quiet",
          "--set", "resolution_schedule=[[0, 16], [0.5, 32]]"])
    steps = load_checkpoint(run / "checkpoint-last.pt")["total_steps"]
    assert seen == [16] * (steps // 2) + [32] * (steps - steps // 2)
    assert json.loads((run / "results.json").read_text())["test"]["count"] > 0  # evaluated at full size


def test_time_budget_with_progressive_resizing_ends_on_time(tmp_path, monkeypatch):
    monkeypatch.setenv("EANET_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    start = time.perf_counter()
    main(["train", *TINY, "--epochs", "1000", "--time-budget", "0.25", "--out", str(run), "--quiet",
          "--schedule", "cosine", "--set", "resolution_schedule=[[0, 16], [0.5, 24], [0.8, 32]]"])
    took = time.perf_counter() - start
    state = load_checkpoint(run / "checkpoint-last.pt")
    assert state["total_steps"] < 1000 * 10
    assert took < 0.25 * 60 * 1.25 + 5
    assert state["global_step"] >= 0.8 * state["total_steps"]


def test_bad_resolution_schedule_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EANET_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet",
              "--set", "resolution_schedule=[[0, 64]]"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "images' size (32)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint-last.pt").exists()


def test_the_default_recipe_resizes_and_set_null_turns_it_off():
    from eanet.train.config import resolve_config

    assert resolve_config().resolution_schedule == [[0.0, 16], [0.25, 24], [0.55, 32]]
    cfg = resolve_config(sets={"resolution_schedule": None, "time_budget": None}, epochs=3, lr=None)
    assert cfg.resolution_schedule is None and cfg.time_budget is None  # --set key=null removes a recipe value
    assert cfg.epochs == 3 and cfg.lr == 0.002  # a None option leaves the recipe's value
