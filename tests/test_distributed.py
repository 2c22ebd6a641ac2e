"""Data-parallel training: N processes (torchrun, gloo) compute what one process computes on the global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from tests.conftest import set_args
from vaelab.config import RunConfig, apply_overrides
from vaelab.data import Batches
from vaelab.distributions.posteriors import DiagonalNormal, StudyCholeskySample
from vaelab.model import Context, Shard
from vaelab.train import Trainer
from vaelab.train.distributed import shard_rows

# 256 images in global batches of 51: five batches split 25 / 26 and a last batch of one image,
# which leaves rank 0 an empty shard; dynamic binarisation exercises the data generator's stream.
DDP = [
    "data.train_limit=256",
    "data.validation_size=256",
    "data.test_limit=256",
    "data.binarize=dynamic",
    "model.arch=conv",
    "train.batch_size=51",
    "train.eval_batch_size=256",
    "train.epochs=2",
    "train.threads=1",
]


@pytest.mark.parametrize("total", [0, 1, 2, 7, 51, 128])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_cover_the_batch_in_order(total, size):
    bounds = [shard_rows(total, rank, size) for rank in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_sharded_batches_are_slices_of_the_global_batches(binarize):
    images = torch.randint(0, 256, (23, 1, 4, 4), dtype=torch.uint8)
    batches = Batches(images, batch_size=5, binarize=binarize)
    whole = list(batches.epoch(torch.Generator().manual_seed(0)))
    for size in (2, 3):
        parts = [
            list(batches.epoch(torch.Generator().manual_seed(0), rows=lambda n, r=r, s=size: shard_rows(n, r, s)))
            for r in range(size)
        ]
        for i, x in enumerate(whole):
            assert torch.equal(torch.cat([p[i] for p in parts]), x)
    assert batches.batch_sizes() == [5, 5, 5, 5, 3]


@pytest.mark.parametrize("study_sampling", [False, True])
def test_sharded_noise_is_the_rows_of_the_global_noise(study_sampling):
    def q_of(mu, sigma):
        if study_sampling:
            return StudyCholeskySample(mu, sigma, torch.tensor([[1.0, 0.0], [0.8, 0.6]]))
        return DiagonalNormal(mu, sigma)

    mu, sigma = torch.randn(7, 2), torch.rand(7, 2) + 0.1
    torch.manual_seed(3)
    z = q_of(mu, sigma).rsample((2,))
    parts = []
    for lo, hi in (shard_rows(7, r, 3) for r in range(3)):
        torch.manual_seed(3)
        eps = Context(shard=Shard(lo, hi, 7)).noise((2, hi - lo, 2), mu)
        parts.append(q_of(mu[lo:hi], sigma[lo:hi]).reparameterize(eps)[0])
    torch.testing.assert_close(torch.cat(parts, dim=1), z, rtol=0, atol=0)


def test_two_processes_train_like_one_process_on_the_global_batch(tmp_path, cli_env):
    parallel = tmp_path / "two"
    env = dict(cli_env, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["-m", "vaelab", "train", "--out", str(parallel), "--no-figures", *set_args(DDP)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("test: total") == 1, result.stdout  # only rank 0 reports

    single = tmp_path / "one"
    Trainer(apply_overrides(RunConfig(), DDP), single, figures=False).fit(progress=False)

    a = safetensors.torch.load_file(str(single / "model.safetensors"))
    b = safetensors.torch.load_file(str(parallel / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=name)

    # rank 0 alone wrote the run: one record per epoch and split, sums over both processes
    records = [json.loads(line) for line in (parallel / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [(r["epoch"], r["split"]) for r in expected]
    for r, e in zip(records, expected):
        for key in ("total", "reconstruction", "kl"):
            assert r[key] == pytest.approx(e[key], rel=1e-5), (r, e)
    assert len(list(parallel.glob("events.*"))) == 1
    meta = json.loads((parallel / "model.json").read_text())
    assert meta["environment"]["processes"] == "2"


def test_batch_norm_is_refused_under_torchrun_before_any_training(tmp_path, cli_env):
    """Each process would normalise over its own shard: not the update of one process on the batch."""
    run = tmp_path / "bn"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["-m", "vaelab", "train", "--out", str(run), "--no-figures", *set_args(DDP)]
        + ["--set", "model.arch=mlp", "--set", "model.batch_norm=true"],
        capture_output=True,
        text=True,
        env=dict(cli_env, OMP_NUM_THREADS="1"),
        timeout=120,
    )
    assert result.returncode != 0
    assert "error: model.batch_norm is not supported with data-parallel training" in result.stderr, result.stderr
    assert not (run / "model.safetensors").exists()
