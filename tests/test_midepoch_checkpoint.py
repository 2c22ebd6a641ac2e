"""Checkpoints inside an epoch: a run killed mid-epoch resumes there and ends exactly as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from tests.conftest import TINY_DATA, set_args

# 32 steps per epoch, a checkpoint after every step (any positive interval below a step's time)
ARGS = set_args(
    TINY_DATA
    + ["model.arch=mlp", "model.hidden=[32]", "train.batch_size=16", "train.eval_batch_size=256"]
    + ["train.epochs=2", "train.threads=1", "train.checkpoint_minutes=1e-9", "train.ema_decay=0.9"]
)
TIMING = {"seconds", "images_per_second"}


def _train(run_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vaelab", "train", "--out", str(run_dir), "--no-figures", *ARGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _checkpoint_info(run_dir: Path) -> dict | None:
    try:
        with safetensors.safe_open(str(run_dir / "checkpoint" / "last.safetensors"), framework="pt") as handle:
            return json.loads(handle.metadata()["info"])
    except Exception:  # not there yet
        return None


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines if line.strip()]


def test_a_run_killed_inside_an_epoch_resumes_there_and_ends_as_an_uninterrupted_run(tmp_path, cli_env):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    victim = _train(killed, cli_env)
    try:
        deadline = time.monotonic() + 120
        while (info := _checkpoint_info(killed)) is None or info.get("step", 0) < 3:
            assert victim.poll() is None, victim.stderr.read().decode()
            assert time.monotonic() < deadline, "no mid-epoch checkpoint appeared"
            time.sleep(0.002)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    info = _checkpoint_info(killed)
    assert info["epoch"] < 2 and 0 < info["step"] < 32, info  # what survived the kill is a mid-epoch checkpoint

    resumed = subprocess.run(
        [sys.executable, "-m", "vaelab", "train", "--resume", str(killed), "--no-figures"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {info['epoch']}, step {info['step']} of epoch {info['epoch'] + 1}" in resumed.stderr
    uninterrupted = _train(whole, cli_env)
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read().decode()

    assert _records(killed) == _records(whole)
    a = safetensors.torch.load_file(str(whole / "model.safetensors"))
    b = safetensors.torch.load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
