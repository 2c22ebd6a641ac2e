"""train.compile = true: the compiled loss trains like the eager one (same noise stream, float tolerance)."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from tests.conftest import tiny_config
from vaelab.train import Trainer
from vaelab.train.trainer import CHECKPOINT


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "objective",
    [(), ("objective.name=iwae", "objective.k=3", "objective.gradient=dreg")],
    ids=["elbo", "iwae-dreg"],
)
def test_compiled_loss_trains_like_eager(tmp_path, objective):
    eager = Trainer(tiny_config("train.epochs=1", *objective), tmp_path / "eager", figures=False)
    eager.fit(progress=False)
    compiled = Trainer(
        tiny_config("train.epochs=1", "train.compile=true", *objective), tmp_path / "compiled", figures=False
    )
    compiled.fit(progress=False)
    for a, b in zip(_records(tmp_path / "eager"), _records(tmp_path / "compiled"), strict=True):
        for key in ("total", "reconstruction", "kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)
    for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=name)
    # the same random stream: both runs end with the same generator states (saved in the checkpoints)
    states = [safetensors.torch.load_file(str(tmp_path / run / CHECKPOINT)) for run in ("eager", "compiled")]
    for key in ("rng.torch", "rng.data"):
        assert torch.equal(states[0][key], states[1][key]), key
