"""Every shipped pretrained model loads and reproduces the test numbers recorded when it was trained."""

from __future__ import annotations

import json

import pytest

import vaelab.pretrained
from vaelab.errors import VaelabError
from vaelab.eval.bound import evaluate_elbo, evaluation_seed
from vaelab.model import load_model
from vaelab.train.trainer import make_batches


@pytest.mark.parametrize("name", vaelab.pretrained.available())
def test_pretrained_model_reproduces_its_recorded_test_elbo(name):
    folder = vaelab.pretrained.path(name)
    model, config, _ = load_model(folder)
    recorded = json.loads((folder / "results.json").read_text())["test"]
    _, batches = make_batches(config)
    test = evaluate_elbo(model, batches["test"], seed=evaluation_seed(config.train.seed))
    # the same weights, images, binarisation and noise: equal up to float summation order
    assert test["total"] == pytest.approx(recorded["total"], abs=1e-3)
    assert test["kl"] == pytest.approx(recorded["kl"], abs=1e-3)


def test_the_study_and_burda_models_ship():
    assert {"seed-2d", "seed-3d", "seed-correlated", "burda-iwae"} <= set(vaelab.pretrained.available())


def test_unknown_pretrained_name_lists_the_available_ones():
    with pytest.raises(VaelabError, match="available: .*seed-2d"):
        vaelab.pretrained.path("seed-9d")
