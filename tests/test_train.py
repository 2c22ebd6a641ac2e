"""Training: the run directory, determinism, reloading, and resume after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests.conftest import TINY_DATA, set_args, tiny_config
from vaelab.config import RunConfig
from vaelab.data import Batches, load_dataset
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
    assert [(r["epoch"], r["split"]) for r in records] == [
        (1, "train"),
        (1, "validation"),
        (2, "train"),
        (2, "validation"),
        (2, "test"),
    ]
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
