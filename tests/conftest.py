"""Shared fixtures: an isolated user cache, a CLI runner, the packaged MNIST and a tiny trained run.

The machine these tests run on has two cores shared with other work, so everything here is tiny:
a few hundred images, an MLP with one hidden layer of 32 units, one torch thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.config import RunConfig, apply_overrides
from vaelab.data import write_idx

torch.set_num_threads(1)

# Overrides that make a run take about a second: 512 training, 256 validation, 256 test images.
TINY_DATA = ["data.train_limit=512", "data.validation_size=256", "data.test_limit=256"]
TINY_MLP = ["model.arch=mlp", "model.hidden=[32]", "train.batch_size=64", "train.eval_batch_size=256"]
TINY = TINY_DATA + TINY_MLP + ["train.epochs=2", "train.threads=1"]
# the (epoch, split) records of a TINY run's metrics.jsonl, in order
TINY_RUN_RECORDS = [(1, "train"), (1, "validation"), (2, "train"), (2, "validation"), (2, "test")]

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def set_args(overrides: list[str]) -> list[str]:
    """``--set key=value`` command-line arguments for a list of overrides."""
    args: list[str] = []
    for item in overrides:
        args += ["--set", item]
    return args


def tiny_config(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), [*TINY, *extra])


def write_fake_idx_set(folder: Path, n_train: int = 40, n_test: int = 16, shape=(28, 28), seed: int = 0) -> Path:
    """Four IDX files named like MNIST's (raw, not gzip) holding random images and labels 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_idx(folder / IDX_NAMES[0], rng.integers(0, 256, (n_train, *shape), dtype=np.uint8))
    write_idx(folder / IDX_NAMES[1], rng.integers(0, 10, n_train, dtype=np.uint8))
    write_idx(folder / IDX_NAMES[2], rng.integers(0, 256, (n_test, *shape), dtype=np.uint8))
    write_idx(folder / IDX_NAMES[3], rng.integers(0, 10, n_test, dtype=np.uint8))
    return folder


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the tests' 'verified' records out of the user's cache (and the user's out of the tests)."""
    cache = tmp_path_factory.mktemp("vaelab-cache")
    saved = {k: os.environ.get(k) for k in ("VAELAB_CACHE", "VAELAB_DATA")}
    os.environ["VAELAB_CACHE"] = str(cache)
    os.environ.pop("VAELAB_DATA", None)
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def cli_env(isolated_cache) -> dict[str, str]:
    env = dict(os.environ)
    env["VAELAB_CACHE"] = str(isolated_cache)
    env.pop("VAELAB_DATA", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="session")
def run_cli(cli_env):
    """Run ``python -m vaelab ARGS`` and return the CompletedProcess (text mode)."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "vaelab", *map(str, args)],
            capture_output=True,
            text=True,
            env=cli_env,
            cwd=cwd,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def mnist():
    from vaelab.data import load_dataset

    return load_dataset("mnist")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished two-epoch run of a tiny MLP VAE (no figures), trained in this process."""
    from vaelab.train import Trainer

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    Trainer(tiny_config(), run_dir, figures=False).fit(progress=False)
    return run_dir


@pytest.fixture
def without_native_bf16(monkeypatch):
    """vaelab believes this CPU has no native bf16 (as on an AVX2-only machine) for one test."""
    from vaelab.core.platform import NO_NATIVE_BF16, cpu_capabilities

    monkeypatch.setenv(NO_NATIVE_BF16, "1")
    cpu_capabilities.cache_clear()
    yield
    monkeypatch.delenv(NO_NATIVE_BF16)
    cpu_capabilities.cache_clear()


def native_bf16() -> bool:
    from vaelab.core.platform import cpu_capabilities

    return cpu_capabilities().native_bf16


def in_process_cli(monkeypatch, capsys, *args) -> subprocess.CompletedProcess:
    """``vaelab ARGS`` through the command line's entry point, in this process (no interpreter to start)."""
    from vaelab.cli import main

    monkeypatch.setattr(sys, "argv", ["vaelab", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, info.value.code, captured.out, captured.err)
