"""Every family takes images as a user has them (uint8, flat vectors, channels last, one image), through
the one coercion in the base class, and refuses anything else in one sentence; interpolate on the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaelab import VaelabError
from vaelab.config import ModelConfig
from vaelab.core.registry import FAMILIES
from vaelab.model import build_model
from vaelab.model.base import LatentVariableModel


def _model(family: str) -> LatentVariableModel:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, arch="conv", latent_dim=2, classes=3), (1, 28, 28)).eval()
    return model.condition(1) if model.takes_labels else model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (4, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize("family", ["vae", "cvae", "gumbel"])
def test_every_family_encodes_the_ways_a_user_holds_images(family, images):
    assert family in FAMILIES.names()
    model = _model(family)
    floats = images.float() / 255
    reference = model.encode(floats)
    as_held = {
        "uint8": images,
        "numpy uint8": images.numpy(),
        "flat vectors": floats.reshape(4, -1),
        "B x H x W": floats[:, 0],
        "channels last": floats.permute(0, 2, 3, 1).numpy(),
        "float64": floats.double(),
    }
    for name, x in as_held.items():
        torch.testing.assert_close(model.encode(x), reference, msg=name)
    torch.testing.assert_close(model.encode(images[0]), reference[:1])  # one image: a batch of one
    torch.testing.assert_close(model.reconstruct(images.reshape(4, -1)), model.reconstruct(floats))


@pytest.mark.parametrize(
    "bad, said",
    [
        (torch.rand(4, 1, 28, 28) * 255, "got values from"),
        (torch.zeros(4, 1, 28, 28, dtype=torch.int64), "got int64 of shape (4, 1, 28, 28)"),
        (torch.rand(4, 3, 28, 28), "got float32 of shape (4, 3, 28, 28)"),
        (torch.rand(4, 100), "got float32 of shape (4, 100)"),
        (torch.full((2, 1, 28, 28), float("nan")), "got values from"),
        ("an image", "got a str"),
    ],
)
def test_anything_else_is_refused_in_one_sentence_naming_the_wanted_shape(bad, said):
    model = _model("vae")
    with pytest.raises(VaelabError) as err:
        model.encode(bad)
    message = str(err.value)
    assert "B x 1 x 28 x 28" in message and "uint8" in message and said in message and "\n" not in message


def test_interpolate_decodes_the_line_between_two_posterior_means(images):
    model = _model("vae")
    line = model.interpolate(images[0], images[1].numpy(), steps=5)
    assert line.shape == (5, 1, 28, 28)
    ends = model.decode(model.encode(images[:2]))
    torch.testing.assert_close(line[[0, -1]], ends)
    middle = model.decode(model.encode(images[:2]).mean(0, keepdim=True))
    torch.testing.assert_close(line[2:3], middle)
    with pytest.raises(VaelabError, match="steps >= 2"):
        model.interpolate(images[0], images[1], steps=1)
    with pytest.raises(VaelabError, match="one image at each end"):
        model.interpolate(images[:2], images[1])


def test_a_family_defined_outside_vaelab_gets_the_coercion_too():
    class Linear(LatentVariableModel):
        family = "linear-test"
        image_shape, latent_dim = (1, 2, 2), 1

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 1)

        def encode(self, x):
            assert x.shape[1:] == (1, 2, 2) and x.dtype == torch.float32
            return self.w(x.flatten(1))

    model = Linear()
    out = model.encode(np.full((3, 4), 255, dtype=np.uint8))
    torch.testing.assert_close(out, model.w(torch.ones(3, 4)))
