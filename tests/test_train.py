"""Training: the run directory, determinism, reloading, and resume after a SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests.conftest import TINY_DATA, TINY_RUN_RECORDS, set_args, tiny_config
from vaelab.config import RunConfig
from vaelab.data import Batches, load_dataset
from vaelab.errors import VaelabError
from vaelab.eval import evaluate_elbo
from vaelab.model import build_vae, load_model
from vaelab.train import Trainer, load_checkpoint
from vaelab.train.trainer import CHECKPOINT

TIMING_FIELDS = ("seconds", "images_per_second")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


# --- the run directory -----------------------------------------------------------------------


def test_run_directory_files(trained_run):
    for name in ("config.toml", "model.safetensors", "model.json", "metrics.jsonl", "report.md"):
        assert (trained_run / name).is_file(), name
    assert (trained_run / CHECKPOINT).is_file()
    assert Path("checkpoint") / "last.safetensors" == CHECKPOINT
    events = list(trained_run.glob("events.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert not list(trained_run.rglob("*.tmp")), "a temporary file was left behind"


def test_config_toml_is_the_resolved_config(trained_run):
    assert RunConfig.load(trained_run / "config.toml") == tiny_config()


def test_metrics_records(trained_run):
    records = _records(trained_run)
    assert [(r["epoch"], r["split"]) for r in records] == TINY_RUN_RECORDS
    for r in records:
        assert r["total"] == pytest.approx(r["reconstruction"] + r["kl"], rel=1e-5)
        assert 0 < r["total"] < 784 and r["kl"] >= 0  # nats per image, summed over 784 pixels
    for r in records[:4:2]:
        assert r["seconds"] > 0 and r["images_per_second"] > 0
    for r in records[1::2]:
        assert len(r["kl_per_dim"]) == 2 and sum(r["kl_per_dim"]) == pytest.approx(r["kl"], rel=1e-5)
    # it learned something in two epochs
    assert records[2]["total"] < records[0]["total"]


def test_model_json_and_report(trained_run):
    meta = json.loads((trained_run / "model.json").read_text())
    assert meta["format"] == "vaelab-model" and meta["image_shape"] == [1, 28, 28]
    assert meta["dataset"] == "mnist" and meta["epochs_trained"] == 2
    assert meta["environment"]["torch"] == torch.__version__
    test = _records(trained_run)[-1]
    assert meta["test"]["total"] == test["total"]
    report = (trained_run / "report.md").read_text()
    assert f"{test['total']:.2f}" in report and "mnist" in report and "mlp" in report


def test_checkpoint_holds_the_final_state(trained_run):
    config = tiny_config()
    model = build_vae(config.model, (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    rng, info = load_checkpoint(trained_run / CHECKPOINT, model, optimizer)
    assert info["epoch"] == 2 and set(rng) == {"torch", "data"}
    assert optimizer.state_dict()["state"], "the optimiser state was not restored"
    saved = safetensors.torch.load_file(str(trained_run / "model.safetensors"))
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_reloaded_model_gives_the_recorded_test_elbo(trained_run, tmp_path):
    model, config, meta = load_model(trained_run)
    assert not model.training and config == tiny_config()
    # the trainer's own evaluation (its split, batches and noise seed) applied to the reloaded weights
    trainer = Trainer(config, tmp_path / "unused", figures=False)
    trainer.model = model
    result = trainer.evaluate(trainer.test_batches)
    recorded = _records(trained_run)[-1]
    assert recorded["split"] == "test"
    for key in ("total", "reconstruction", "kl"):
        assert result[key] == pytest.approx(recorded[key], rel=1e-6, abs=1e-6), key
    # a fresh, untrained model of the same config does not give those numbers
    trainer.model = build_vae(config.model, (1, 28, 28))
    assert trainer.evaluate(trainer.test_batches)["total"] != pytest.approx(recorded["total"], rel=1e-3)


def test_evaluation_is_deterministic_and_leaves_the_rng_alone(trained_run):
    model, config, _ = load_model(trained_run)
    data = load_dataset(config.data.name)
    test_x, test_y = data.splits(config.data.validation_size, config.data.train_limit, config.data.test_limit)["test"]
    batches = Batches(test_x, test_y, 100, config.data.binarize, training=False)
    state = torch.get_rng_state()
    first = evaluate_elbo(model, batches, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate_elbo(model, batches, seed=3) == first
    assert evaluate_elbo(model, batches, seed=4)["total"] != first["total"]  # the seed is the noise


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_metrics_other_seed_other_metrics(trained_run, tmp_path):
    Trainer(tiny_config(), tmp_path / "again", figures=False).fit(progress=False)
    Trainer(tiny_config("train.seed=1"), tmp_path / "seed1", figures=False).fit(progress=False)
    first = _without_timing(_records(trained_run))
    again = _without_timing(_records(tmp_path / "again"))
    other = _without_timing(_records(tmp_path / "seed1"))
    assert again == first
    assert len(other) == len(first)
    for a, b in zip(first, other):
        assert a["total"] != b["total"], (a, b)


def test_dynamic_binarisation_run_is_deterministic(tmp_path):
    """The data generator drives dynamic binarisation; the seed fixes it too."""
    config = tiny_config("data.binarize=dynamic", "train.epochs=1")
    a = Trainer(config, tmp_path / "a", figures=False)
    a.fit(progress=False)
    b = Trainer(config, tmp_path / "b", figures=False)
    b.fit(progress=False)
    assert _without_timing(a.records()) == _without_timing(b.records())


# --- weight averaging ------------------------------------------------------------------------


def test_moving_average_of_the_weights_is_what_the_run_saves(tmp_path):
    """With train.ema_decay the raw training is untouched, and the saved weights are the average
    e_1 = w_1, e_t = d e_(t-1) + (1 - d) w_t over the raw weights after every step."""
    decay = 0.8
    plain = Trainer(tiny_config("train.epochs=1"), tmp_path / "plain", figures=False)
    after_each_step = []
    step = plain.step

    def recording_step(*args, **kwargs):
        terms = step(*args, **kwargs)
        after_each_step.append({k: v.detach().clone() for k, v in plain.model.state_dict().items()})
        return terms

    plain.step = recording_step
    plain.fit(progress=False)
    averaged = Trainer(tiny_config("train.epochs=1", f"train.ema_decay={decay}"), tmp_path / "ema", figures=False)
    test = averaged.fit(progress=False)

    expected = dict(after_each_step[0])
    for weights in after_each_step[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    saved = safetensors.torch.load_file(str(tmp_path / "ema" / "model.safetensors"))
    raw = averaged.model.state_dict()
    assert len(after_each_step) == len(averaged.train_batches) > 1
    for name, value in saved.items():
        assert torch.equal(raw[name], after_each_step[-1][name])  # the average does not steer training
        torch.testing.assert_close(value, expected[name])
    parameters = dict(averaged.model.named_parameters())
    assert parameters and all(not torch.equal(saved[name], value) for name, value in parameters.items())
    # the recorded test bound is the averaged weights' bound, not the raw weights'
    assert test["total"] != _records(tmp_path / "plain")[-1]["total"]
    assert "moving average (decay 0.8" in (tmp_path / "ema" / "report.md").read_text()


# --- resume after SIGKILL --------------------------------------------------------------------

RESUME_ARGS = set_args(
    TINY_DATA
    + ["model.arch=conv", "train.batch_size=64", "train.eval_batch_size=256", "train.epochs=3", "train.threads=1"]
    + ["train.ema_decay=0.9"]  # the weights' moving average must come back from the checkpoint too
)


def _start(run_dir: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "vaelab", "train", "--out", str(run_dir), "--no-figures", *RESUME_ARGS],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def test_resume_after_sigkill_replays_the_uninterrupted_run(tmp_path, cli_env):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = _start(whole, cli_env, tmp_path / "whole.log")  # runs alongside, on its own thread
    try:
        _kill_resume_and_compare(tmp_path, whole, killed, uninterrupted, cli_env)
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()


def _kill_resume_and_compare(tmp_path, whole, killed, uninterrupted, cli_env):
    victim = _start(killed, cli_env, tmp_path / "killed.log")
    checkpoint = killed / CHECKPOINT
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists():
            assert victim.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert not (killed / "model.json").exists(), "the run finished before the kill: nothing was tested"

    # the checkpoint that survived the kill is whole
    config = RunConfig.load(killed / "config.toml")
    model = build_vae(config.model, (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    _, info = load_checkpoint(checkpoint, model, optimizer)
    assert 1 <= info["epoch"] < 3

    resumed = subprocess.run(
        [sys.executable, "-m", "vaelab", "train", "--resume", str(killed), "--no-figures"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {info['epoch']}" in resumed.stderr
    assert uninterrupted.wait(timeout=120) == 0, (tmp_path / "whole.log").read_text()

    expected = _without_timing(_records(whole))
    assert [(r["epoch"], r["split"]) for r in expected] == [
        (e, s) for e in (1, 2, 3) for s in ("train", "validation")
    ] + [(3, "test")]
    assert _without_timing(_records(killed)) == expected
    # and the final weights are the same
    a = safetensors.torch.load_file(str(whole / "model.safetensors"))
    b = safetensors.torch.load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_errors(tmp_path):
    from vaelab import VaelabError

    with pytest.raises(VaelabError, match="not a vaelab run directory"):
        Trainer.resume(tmp_path)
    run = tmp_path / "no-checkpoint"
    run.mkdir()
    tiny_config().save(run / "config.toml")
    with pytest.raises(VaelabError, match="no checkpoint"):
        Trainer.resume(run)


def test_checkpoint_restores_fused_adam_for_channels_last_weights(tmp_path):
    """A restored fused Adam must take exactly the step the original would (moments keep the weights' layout)."""
    from vaelab.config import ModelConfig
    from vaelab.model import build_vae
    from vaelab.train import load_checkpoint, save_checkpoint

    def make():
        model = build_vae(ModelConfig(), (1, 28, 28))
        return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step(model, optimizer, x):
        optimizer.zero_grad()
        model.p_x(model.q_z(x).mean).log_prob(x).sum().neg().backward()
        optimizer.step()

    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    model, optimizer = make()
    step(model, optimizer, x)
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer, {}, {"epoch": 1})
    restored, restored_optimizer = make()
    load_checkpoint(tmp_path / "c.safetensors", restored, restored_optimizer)
    step(model, optimizer, x)
    step(restored, restored_optimizer, x)
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name


def test_decoder_bias_data_mean_starts_at_the_training_split_mean(tmp_path):
    trainer = Trainer(tiny_config("model.decoder_bias=data-mean"), tmp_path / "run", figures=False)
    train_images = trainer.train_batches.images.double().mean(0) / 255  # the training split only
    expected = torch.logit(train_images.float().clamp(1e-3, 1 - 1e-3)).flatten()
    torch.testing.assert_close(trainer.model.decoder.net[0][-1].bias.detach(), expected)
    default = Trainer(tiny_config(), tmp_path / "default", figures=False)
    assert not torch.allclose(default.model.decoder.net[0][-1].bias, expected)


# --- never a NaN model -----------------------------------------------------------------------

ONE_STEP = ["data.train_limit=64", "train.epochs=1"]  # one optimiser step per epoch: it is the last step


def _logged(run_dir: Path) -> list[dict]:
    return _records(run_dir) if (run_dir / "metrics.jsonl").exists() else []


def _finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point())


def test_a_last_step_that_makes_the_weights_non_finite_saves_nothing(tmp_path):
    from vaelab import VaelabError

    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(*ONE_STEP, "train.lr=1e38"), run_dir, figures=False)
    with pytest.raises(VaelabError, match=r"diverged in epoch 1: NaN or inf in the weights") as caught:
        trainer.fit(progress=False)
    assert not _finite(trainer.model), "the run was meant to diverge in its last step"
    assert "train.lr = 1e+38 is high" in str(caught.value) and "Nothing was saved" in str(caught.value)
    assert not (run_dir / CHECKPOINT).exists() and not (run_dir / "model.safetensors").exists()
    assert not (run_dir / "model.json").exists() and _logged(run_dir) == []


@pytest.mark.parametrize(
    ("validation", "split"), [("data.validation_size=256", "validation"), ("data.validation_size=0", "test")]
)
def test_a_divergence_seen_only_on_held_out_images_saves_no_model(tmp_path, validation, split):
    """Finite weights after the last step, but the held-out bound overflows: no NaN numbers, no model."""
    from vaelab import VaelabError

    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(*ONE_STEP, "train.lr=1e6", validation), run_dir, figures=False)
    with pytest.raises(VaelabError, match=f"diverged in epoch 1: the {split} .* came out NaN or inf"):
        trainer.fit(progress=False)
    assert _finite(trainer.model), "the weights were meant to stay finite"
    assert not (run_dir / "model.json").exists() and not (run_dir / "model.safetensors").exists()
    assert all(r["split"] == "train" for r in _logged(run_dir))
    assert (run_dir / CHECKPOINT).exists() == (split == "test")  # the epoch itself was fine


def test_a_later_divergence_keeps_the_last_good_checkpoint_resumable(tmp_path):
    from vaelab import VaelabError

    run_dir = tmp_path / "run"
    Trainer(tiny_config(*ONE_STEP), run_dir, figures=False).fit(progress=False)
    good_checkpoint, good_model = (run_dir / CHECKPOINT).read_bytes(), (run_dir / "model.safetensors").read_bytes()

    def resume_to_epoch_2(lr: float) -> Trainer:
        config = RunConfig.load(run_dir / "config.toml")
        config.train.lr = lr
        config.save(run_dir / "config.toml")
        trainer = Trainer.resume(run_dir, figures=False)
        trainer.config.train.epochs = 2
        trainer.fit(progress=False)
        return trainer

    with pytest.raises(VaelabError, match="diverged in epoch 2: NaN or inf in the weights") as caught:
        resume_to_epoch_2(1e38)
    assert "last good checkpoint is kept" in str(caught.value) and "--resume" in str(caught.value)
    assert (run_dir / CHECKPOINT).read_bytes() == good_checkpoint
    assert (run_dir / "model.safetensors").read_bytes() == good_model
    trainer = resume_to_epoch_2(1e-3)
    assert trainer.epoch == 2 and _finite(trainer.model)
    assert json.loads((run_dir / "model.json").read_text())["epochs_trained"] == 2


def test_a_diverging_run_on_the_command_line_is_one_error_line(tmp_path, run_cli):
    out = tmp_path / "run"
    args = set_args([*TINY_DATA, "data.train_limit=64", "model.hidden=[32]"])
    result = run_cli(
        "train", "--arch", "mlp", "--epochs", "1", "--lr", "1e38", "--threads", "1", "--no-figures", "--out", out, *args
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: training diverged in epoch 1"), result.stderr
    assert "Traceback" not in result.stderr
    assert "train.lr = 1e+38" in result.stderr and not (out / "model.json").exists()


def test_elbo_share_trains_the_elbo_first_then_the_iwae_bound(tmp_path):
    """objective.elbo_share: the first share of the epochs is exactly an ELBO run's (same seed, same
    numbers); the IWAE bound takes over afterwards, and the records say which bound each epoch trained."""
    shared = ["train.epochs=4", "model.latent_dim=4"]
    mixed = Trainer(
        tiny_config(*shared, "objective.name=iwae", "objective.k=4", "objective.elbo_share=0.5"), tmp_path / "m"
    )
    mixed.fit(progress=False)
    plain = Trainer(tiny_config(*shared), tmp_path / "e")
    plain.fit(progress=False)
    trained = [r for r in mixed.records() if r["split"] == "train"]
    elbo_only = [r for r in plain.records() if r["split"] == "train"]
    assert [r["bound"] for r in trained] == ["elbo", "elbo", "iwae", "iwae"]
    assert [r["total"] for r in trained[:2]] == [r["total"] for r in elbo_only[:2]]
    assert trained[2]["total"] != elbo_only[2]["total"]
    assert "bound" not in elbo_only[0]
    timed = Trainer(tiny_config("objective.name=iwae", "objective.elbo_share=0.25", "train.minutes=20"), tmp_path / "t")
    assert timed._elbo_phase(299.0) and not timed._elbo_phase(300.0)


@pytest.mark.parametrize(
    "setting, message",
    [
        (["objective.name=iwae", "objective.elbo_share=1"], "must be in [0, 1)"),
        (["objective.name=iwae", "objective.elbo_share=nan"], "must be a finite number"),
        (["objective.elbo_share=0.5"], "applies to objective.name = iwae"),
    ],
)
def test_elbo_share_refuses_what_means_nothing(setting, message):
    with pytest.raises(VaelabError, match=re.escape(message)):
        tiny_config(*setting)
