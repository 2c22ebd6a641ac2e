"""vaelab serve: the JSON API (happy paths and every kind of bad request), the page's files, the command line."""

from __future__ import annotations

import base64
import builtins
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")

with warnings.catch_warnings():  # starlette's notice that it prefers httpx2 to httpx
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient  # noqa: E402

from vaelab.config import ModelConfig  # noqa: E402
from vaelab.model.build import build_model  # noqa: E402
from vaelab.serve import create_app, load_models, prepare  # noqa: E402
from vaelab.serve.images import mnist_layout  # noqa: E402

SCATTER = 300


@pytest.fixture(scope="module")
def served():
    models = load_models(pretrained=["seed-2d", "seed-3d", "burda-vae"], scatter_limit=SCATTER)
    torch.manual_seed(0)
    for prior in ("correlated", "mog"):  # untrained: only their priors' geometry is looked at
        model = build_model(ModelConfig(arch="mlp", hidden=[16], latent_dim=2, prior=prior), (1, 28, 28))
        models[prior] = prepare(prior, model, "test", "mnist", scatter_limit=100)
    return models


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served), raise_server_exceptions=False) as c:
        yield c


def png_of(array: np.ndarray, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def post(client, path: str, body) -> tuple[int, dict]:
    r = client.post(path, json=body)
    return r.status_code, r.json()


def raw(client, path: str, body: bytes) -> tuple[int, dict]:
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    return r.status_code, r.json()


# ------------------------------------------------------------------------------------------ happy paths


def test_models_lists_every_served_model(client):
    r = client.get("/api/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert list(models) == ["seed-2d", "seed-3d", "burda-vae", "correlated", "mog"]
    assert models["seed-2d"]["latent_dim"] == 2 and models["seed-3d"]["latent_dim"] == 3
    assert models["burda-vae"]["latent_dim"] == 50
    assert models["seed-2d"]["image_shape"] == [1, 28, 28]
    assert models["seed-2d"]["scatter_points"] == SCATTER and models["seed-2d"]["can_encode"]
    assert models["seed-2d"]["test"]["total"] > 100  # the shipped model's test -ELBO, nats
    assert client.get("/api/models/seed-3d").json()["name"] == "seed-3d"


def test_prior_geometry(client):
    standard = client.get("/api/models/seed-2d/prior").json()
    assert standard["kind"] == "gaussian" and standard["cov"] == [[1.0, 0.0], [0.0, 1.0]]
    correlated = client.get("/api/models/correlated/prior").json()
    assert correlated["kind"] == "gaussian" and correlated["cov"][0][1] == pytest.approx(0.8, abs=1e-5)
    mixture = client.get("/api/models/mog/prior").json()
    assert mixture["kind"] == "density" and [c["mass"] for c in mixture["contours"]] == ["39%", "86%"]
    assert all(len(c["lines"]) >= 1 and len(c["lines"][0][0]) == 2 for c in mixture["contours"])


def test_scatter_is_the_same_test_images_for_every_model(client, served):
    a = client.get("/api/models/seed-2d/scatter").json()
    b = client.get("/api/models/seed-3d/scatter").json()
    assert a["indices"] == b["indices"] and len(a["indices"]) == SCATTER
    assert a["labels"] == b["labels"] and set(a["labels"]) <= set(range(10))
    assert np.asarray(a["means"]).shape == (SCATTER, 2) and np.asarray(b["means"]).shape == (SCATTER, 3)
    from vaelab.data import load_dataset, to_unit_float

    images = load_dataset("mnist").x_test[a["indices"][:5]]
    expected = served["seed-2d"].model.encode(to_unit_float(images))
    np.testing.assert_allclose(np.asarray(a["means"][:5]), expected.numpy(), atol=1e-3)


def test_decode_png_and_array(client, served):
    z = [[0.0, 0.0], [1.5, -0.5]]
    status, out = post(client, "/api/models/seed-2d/decode", {"z": z})
    assert status == 200 and out["shape"] == [1, 28, 28] and len(out["images"]) == 2
    pixels = decoded(out["images"][1])
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    expected = served["seed-2d"].model.decode(torch.tensor(z))[1, 0].numpy()
    assert np.abs(pixels / 255.0 - expected).max() <= 0.5 / 255 + 1e-6
    status, out = post(client, "/api/models/seed-2d/decode", {"z": z, "format": "array"})
    array = np.asarray(out["images"])
    assert status == 200 and array.shape == (2, 1, 28, 28) and array.min() >= 0 and array.max() <= 1
    np.testing.assert_allclose(array[1, 0], expected, atol=1e-4)
    assert post(client, "/api/models/burda-vae/decode", {"z": [[0.0] * 50]})[0] == 200


def test_encode_an_array_and_a_png(client, served, mnist):
    from vaelab.data import to_unit_float

    image = to_unit_float(mnist.x_test[:1])[0]
    status, out = post(client, "/api/models/seed-2d/encode", {"image": image[0].tolist()})
    assert status == 200
    mean, scale = served["seed-2d"].model.features(image[None])
    np.testing.assert_allclose(out["mean"], mean[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["scale"], scale[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(np.diag(out["cov"]), scale[0].numpy() ** 2, atol=1e-6)
    assert decoded(out["reconstruction"]).shape == (28, 28)
    # the same digit as a PNG (a data: URL, 4x larger, RGBA as a canvas sends it): about the same mean
    big = np.kron(mnist.x_test[0, 0].numpy(), np.ones((4, 4), np.uint8))
    rgba = np.stack([big, big, big, np.full_like(big, 255)], -1)
    status, out_png = post(client, "/api/models/seed-2d/encode", {"image_png": "data:image/png;base64," + png_of(rgba)})
    assert status == 200
    np.testing.assert_allclose(out_png["mean"], out["mean"], atol=0.15)
    # 3-D model, the C x H x W form, the MNIST layout
    status, out3 = post(client, "/api/models/seed-3d/encode", {"image": image.tolist(), "layout": "mnist"})
    assert status == 200 and len(out3["mean"]) == 3 and np.asarray(out3["cov"]).shape == (3, 3)


def test_mnist_layout_centres_and_fits_the_ink():
    image = torch.zeros(1, 28, 28)
    image[0, 2:6, 1:20] = 1.0  # a wide stroke in the top-left corner
    out = mnist_layout(image)
    rows, cols = torch.nonzero(out[0] > 0.05, as_tuple=True)
    assert int(cols.max() - cols.min()) + 1 <= 21  # fitted into 20 pixels
    mass = out[0]
    cy = float((mass.sum(1) * torch.arange(28)).sum() / mass.sum())
    cx = float((mass.sum(0) * torch.arange(28)).sum() / mass.sum())
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    assert torch.equal(mnist_layout(torch.zeros(1, 28, 28)), torch.zeros(1, 28, 28))


def test_sample_is_seeded(client):
    status, a = post(client, "/api/models/correlated/sample", {"n": 4, "seed": 7})
    assert status == 200 and len(a["images"]) == 4 and np.asarray(a["z"]).shape == (4, 2)
    assert post(client, "/api/models/correlated/sample", {"n": 4, "seed": 7})[1] == a
    assert post(client, "/api/models/correlated/sample", {"n": 4, "seed": 8})[1] != a


def test_grid_and_cross_section(client, served):
    body = {"origin": [0.0, 0.0, 0.5], "axes": [[1.0, 0, 0], [0, 1.0, 0]], "x": [-2, 2], "y": [-2, 2], "n": 5}
    status, out = post(client, "/api/models/seed-3d/grid", body)
    assert status == 200 and out["n"] == 5 and out["tile"] == [28, 28]
    mosaic = decoded(out["image"])
    assert mosaic.shape == (140, 140)
    # the top-left tile is (a, b) = (-2, +2), the bottom-right (+2, -2)
    model = served["seed-3d"].model
    for (row, col), z in (((0, 0), [-2.0, 2.0, 0.5]), ((4, 4), [2.0, -2.0, 0.5])):
        tile = mosaic[28 * row : 28 * row + 28, 28 * col : 28 * col + 28] / 255.0
        assert np.abs(tile - model.decode(torch.tensor([z]))[0, 0].numpy()).max() < 1 / 255 + 1e-6
    r = client.get("/api/models/seed-3d/cross-section", params={"value": 0.5, "n": 5, "span": 2})
    assert r.status_code == 200 and r.json()["image"] == out["image"]  # the study's cross-section is that plane


def test_page_and_its_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name in re.findall(r'(?:src|href)="/static/([^"]+)"', r.text):
        assert client.get(f"/static/{name}").status_code == 200
    for asset in ("app.js", "style.css", "index.html"):
        assert "//cdn" not in client.get(f"/static/{asset}").text  # nothing is fetched from elsewhere


def test_openapi_page_works_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: ?'([^']+)'", page.text)
    assert urls and all(u.startswith("/") for u in urls), urls  # no CDN
    for url in urls:
        assert client.get(url).status_code == 200, url
    spec = client.get("/openapi.json").json()
    for path in ("/api/models", "/api/models/{name}/decode", "/api/models/{name}/encode", "/api/models/{name}/sample"):
        assert path in spec["paths"]
    assert "/api/models/{name}/scatter" in spec["paths"] and "/api/models/{name}/grid" in spec["paths"]


def test_requests_read_nothing_from_disk(client, monkeypatch, mnist):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a request opened a file: {args[:1]}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(io, "open", refuse)
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert client.get("/api/models/seed-2d/scatter").status_code == 200
    assert post(client, "/api/models/seed-2d/decode", {"z": [[0, 1]]})[0] == 200
    image = png_of(mnist.x_test[0, 0].numpy())
    assert post(client, "/api/models/seed-2d/encode", {"image_png": image})[0] == 200
    assert client.get("/static/..%2F__init__.py").status_code == 404
    assert client.get("/api/models/..%2F..%2Fetc%2Fpasswd/scatter").status_code == 404


# ------------------------------------------------------------------------------------------ bad requests

BAD_JSON = [
    ("/api/models/seed-2d/decode", b'{"z": [[0, 0]'),  # cut short
    ("/api/models/seed-2d/decode", b"not json at all"),
    ("/api/models/seed-2d/encode", b"\xff\xfe\x00"),
]

BAD_BODIES = [
    ("/api/models/seed-2d/decode", b'{"z": [[NaN, 0]]}', "finite"),
    ("/api/models/seed-2d/decode", b'{"z": [[Infinity, 0]]}', "finite"),
    ("/api/models/seed-2d/decode", b'{"z": [[-Infinity, 0]]}', "finite"),
    ("/api/models/seed-2d/decode", b'{"z": [[1e308, 0]]}', "less than or equal"),
    ("/api/models/seed-2d/decode", b'{"z": [[0, 0, 0]]}', "latent_dim 2"),
    ("/api/models/seed-2d/decode", b'{"z": [[0]]}', "latent_dim 2"),
    ("/api/models/seed-2d/decode", b'{"z": [[]]}', "latent_dim 2"),
    ("/api/models/seed-2d/decode", b'{"z": []}', "at least 1"),
    ("/api/models/seed-2d/decode", b'{"z": [["0", "1"]]}', "number"),
    ("/api/models/seed-2d/decode", b'{"z": [[true, false]]}', "number"),
    ("/api/models/seed-2d/decode", b'{"z": [0, 1]}', "list"),
    ("/api/models/seed-2d/decode", b'{"z": "0, 1"}', "list"),
    ("/api/models/seed-2d/decode", b'{"z": [[0, 1]], "format": "jpeg"}', "png"),
    ("/api/models/seed-2d/decode", b'{"z": [[0, 1]], "extra": 1}', "not permitted"),
    ("/api/models/seed-2d/decode", b"{}", "required"),
    ("/api/models/seed-2d/decode", b"[]", "valid dictionary"),
    ("/api/models/seed-2d/decode", json.dumps({"z": [[0, 0]] * 257}).encode(), "at most 256"),
    ("/api/models/seed-2d/sample", b'{"n": 100000}', "less than or equal to 256"),
    ("/api/models/seed-2d/sample", b'{"n": 0}', "greater than or equal to 1"),
    ("/api/models/seed-2d/sample", b'{"n": 1.5}', "integer"),
    ("/api/models/seed-2d/sample", b'{"n": "4"}', "integer"),
    ("/api/models/seed-2d/sample", b'{"n": 4, "seed": -1}', "greater than or equal to 0"),
    ("/api/models/seed-2d/sample", b'{"n": 4, "seed": 1e400}', "integer"),
    ("/api/models/seed-2d/grid", b'{"origin": [0, 0], "axes": [[1, 0], [0, 1]], "n": 31}', "less than or equal"),
    ("/api/models/seed-2d/grid", b'{"origin": [0, 0], "axes": [[1, 0]]}', "at least 2"),
    ("/api/models/seed-2d/grid", b'{"origin": [0, 0, 0], "axes": [[1, 0], [0, 1]]}', "latent_dim 2"),
    ("/api/models/seed-2d/grid", b'{"origin": [0, 0], "axes": [[1, 0], [0, 1, 2]]}', "latent_dim 2"),
    ("/api/models/seed-2d/grid", b'{"origin": [0, 0], "axes": [[1, 0], [0, 1]], "x": [NaN, 1]}', "finite"),
    ("/api/models/seed-2d/encode", b"{}", "exactly one"),
    ("/api/models/seed-2d/encode", b'{"image": [[0.5]], "image_png": "AAAA"}', "exactly one"),
    ("/api/models/seed-2d/encode", json.dumps({"image": [[0.5] * 27] * 28}).encode(), "takes 28 x 28"),
    ("/api/models/seed-2d/encode", json.dumps({"image": [[0.5] * 28] * 27 + [[0.5] * 27]}).encode(), "ragged"),
    ("/api/models/seed-2d/encode", json.dumps({"image": [[0.5] * 28] * 27 + [[[0.5]] * 28]}).encode(), "list"),
    ("/api/models/seed-2d/encode", b'{"image": [[]]}', "takes 28 x 28"),
    ("/api/models/seed-2d/encode", b'{"image": []}', "takes 28 x 28"),
    ("/api/models/seed-2d/encode", json.dumps({"image": [[[0.5] * 28] * 28] * 3}).encode(), "takes 28 x 28"),
    ("/api/models/seed-2d/encode", json.dumps({"image": [[2.0] * 28] * 28}).encode(), "less than or equal to 1"),
    ("/api/models/seed-2d/encode", json.dumps({"image": [[-0.1] * 28] * 28}).encode(), "greater than or equal"),
    ("/api/models/seed-2d/encode", b'{"image": [[NaN]]}', "finite"),
    ("/api/models/seed-2d/encode", b'{"image": "a picture"}', "list"),
    ("/api/models/seed-2d/encode", b'{"image_png": "not base64!"}', "not base64"),
    ("/api/models/seed-2d/encode", b'{"image_png": "aGVsbG8gd29ybGQ="}', "not a readable PNG"),
    ("/api/models/seed-2d/encode", b'{"image_png": ""}', "not a readable PNG"),
    ("/api/models/seed-2d/encode", b'{"image_png": "AAAA", "layout": "emnist"}', "as-is"),
]


@pytest.mark.parametrize(("path", "body"), BAD_JSON, ids=range(len(BAD_JSON)))
def test_malformed_json_is_400(client, path, body):
    status, out = raw(client, path, body)
    assert status == 400 and out["error"] == "the request body is not valid JSON"


@pytest.mark.parametrize(
    ("path", "body", "says"), BAD_BODIES, ids=[f"{p.rsplit('/', 1)[1]}-{i}" for i, (p, _, _) in enumerate(BAD_BODIES)]
)
def test_bad_request_is_4xx_json(client, path, body, says):
    status, out = raw(client, path, body)
    assert status == 422, out
    assert says in out["error"], out
    assert "\n" not in out["error"]
    json.dumps(out, allow_nan=False)  # what is refused is never echoed back as NaN


def test_images_that_are_not_pngs_or_too_large(client):
    jpeg = png_of(np.zeros((28, 28), np.uint8), fmt="JPEG")
    status, out = post(client, "/api/models/seed-2d/encode", {"image_png": jpeg})
    assert status == 422 and "send a PNG" in out["error"]
    # 5000 x 5000 pixels compress to a few kB: refused from the header, before decoding
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    status, out = post(
        client, "/api/models/seed-2d/encode", {"image_png": base64.b64encode(buffer.getvalue()).decode()}
    )
    assert status == 422 and "at most" in out["error"]
    truncated = base64.b64decode(png_of(np.zeros((28, 28), np.uint8)))[:40]
    status, out = post(client, "/api/models/seed-2d/encode", {"image_png": base64.b64encode(truncated).decode()})
    assert status == 422 and "not a readable PNG" in out["error"]


def test_unknown_model_route_and_method(client):
    for path in ("/api/models/nope", "/api/models/nope/scatter", "/api/models/nope/prior"):
        r = client.get(path)
        assert r.status_code == 404 and "no model named 'nope'" in r.json()["error"] and "seed-2d" in r.json()["error"]
    status, out = post(client, "/api/models/nope/decode", {"z": [[0, 0]]})
    assert status == 404 and "no model named" in out["error"]
    r = client.get("/api/nothing")
    assert r.status_code == 404 and r.json()["error"]
    r = client.get("/api/models/seed-2d/decode")
    assert r.status_code == 405 and r.json()["error"]
    assert client.get("/static/missing.js").status_code == 404


def test_cross_section_needs_three_dimensions_and_finite_values(client):
    r = client.get("/api/models/seed-2d/cross-section")
    assert r.status_code == 422 and "latent_dim >= 3" in r.json()["error"]
    for params in ({"value": "nan"}, {"value": "inf"}, {"n": 0}, {"n": 31}, {"span": 0}, {"value": "x"}):
        r = client.get("/api/models/seed-3d/cross-section", params=params)
        assert r.status_code == 422 and r.json()["error"], params


def test_body_too_large_is_413(client):
    body = b'{"z": [[0, 0]], "pad": "' + b"x" * (5 * 2**20) + b'"}'
    status, out = raw(client, "/api/models/seed-2d/decode", body)
    assert status == 413 and "larger than 4 MiB" in out["error"]

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"z": [[0, 0]], "pad": "'
        for _ in range(5):
            yield b"x" * 2**20
        yield b'"}'

    r = client.post("/api/models/seed-2d/decode", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]


def test_model_without_closed_form_posterior_cannot_encode(mnist):
    model = build_model(ModelConfig(arch="mlp", hidden=[16], latent_dim=2, posterior="iaf"), (1, 28, 28))
    served = prepare("iaf", model, "test", "mnist", scatter_limit=10)
    assert not served.can_encode and served.scatter.note
    with TestClient(create_app({"iaf": served})) as c:
        status, out = post(c, "/api/models/iaf/encode", {"image": [[0.0] * 28] * 28})
        assert status == 422 and "no closed-form mean and scale" in out["error"]
        assert post(c, "/api/models/iaf/decode", {"z": [[0, 0]]})[0] == 200


@pytest.mark.parametrize("inference", ["bottom-up", "ladder"])
def test_a_hierarchy_is_served_by_its_top_layer(inference, mnist):
    """Scatter, encoding, decoding, grids and samples of the top layer's code, through the protocol's q_z."""
    from vaelab.data import to_unit_float

    config = ModelConfig(
        family="hierarchical",
        arch="mlp",
        hidden=[16],
        stochastic_layers=[8, 3],
        latent_dim=3,
        layer_hidden=[16],
        inference=inference,
    )
    torch.manual_seed(0)
    model = build_model(config, (1, 28, 28))
    served = prepare("h", model, "test", "mnist", scatter_limit=40)
    assert served.can_encode and not served.scatter.note and served.scatter.means.shape == (40, 3)
    x = to_unit_float(mnist.x_test[served.scatter.indices[:5]])
    np.testing.assert_allclose(served.scatter.means[:5], model.encode(x).numpy(), atol=1e-5)
    with TestClient(create_app({"h": served})) as c:
        info = c.get("/api/models/h").json()
        assert info["family"] == "hierarchical" and info["latent_dim"] == 3 and info["can_encode"]
        prior = c.get("/api/models/h/prior").json()  # p(z_L) = N(0, I) over the top layer
        assert prior["kind"] == "gaussian" and prior["cov"] == np.eye(3).tolist()
        status, out = post(c, "/api/models/h/encode", {"image": x[0, 0].tolist()})
        assert status == 200
        q = model.q_z(x[:1])
        np.testing.assert_allclose(out["mean"], model.encode(x[:1])[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["scale"], q.stddev[0].detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(np.diag(out["cov"]), q.stddev[0].detach().numpy() ** 2, atol=1e-6)
        expected = model.reconstruct_through(x[:1], 2)[0, 0].numpy()  # up to the top layer and back down
        assert np.abs(decoded(out["reconstruction"]) / 255.0 - expected).max() <= 0.5 / 255 + 1e-6
        z = [[0.5, -1.0, 0.0]]
        status, out = post(c, "/api/models/h/decode", {"z": z, "format": "array"})
        assert status == 200
        np.testing.assert_allclose(np.asarray(out["images"]), model.decode(torch.tensor(z)).numpy(), atol=1e-4)
        status, out = post(c, "/api/models/h/decode", {"z": [[0.0] * 8]})  # a bottom-layer code is not a point here
        assert status == 422 and "latent_dim 3" in out["error"] and "\n" not in out["error"]
        status, out = post(c, "/api/models/h/sample", {"n": 4, "seed": 3})
        assert status == 200 and len(out["images"]) == 4 and np.asarray(out["z"]).shape == (4, 3)
        body = {"origin": [0.0, 0.0, 0.0], "axes": [[1.0, 0, 0], [0, 1.0, 0]], "n": 3}
        assert post(c, "/api/models/h/grid", body)[0] == 200
        assert c.get("/api/models/h/cross-section", params={"n": 3}).status_code == 200


def test_the_shipped_two_layer_model_is_served_with_its_scatter():
    served = load_models(pretrained=["burda-vae-2l"], scatter_limit=20)["burda-vae-2l"]
    assert served.can_encode and not served.scatter.note and served.scatter.means.shape == (20, 50)
    assert served.info()["test"]["total"] > 80  # its test -ELBO, nats


# ------------------------------------------------------------------------------------------ command line


def test_bad_command_lines_end_in_one_line(run_cli, tmp_path):
    r = run_cli("serve", "--pretrained", "no-such-model")
    assert r.returncode == 2 and r.stderr.startswith("error: no pretrained model named") and r.stderr.count("\n") == 1
    r = run_cli("serve", tmp_path)
    assert r.returncode == 2 and "no model.json" in r.stderr and r.stderr.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("serve", "--port", str(port))
    assert r.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("serve", "--host", "no-such-host.invalid")
    assert r.returncode == 2 and r.stderr.startswith("error: --host no-such-host.invalid")


def _start(cli_env, *args):
    process = subprocess.Popen(
        [sys.executable, "-m", "vaelab", "serve", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        if line.startswith("serving"):
            break
    assert line.startswith("serving"), (line, process.stderr.read() if process.poll() is not None else "")
    return process, re.search(r"http://\S+/", line).group(0)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_serve_with_no_arguments_opens_on_the_shipped_models(cli_env):
    args = [] if _port_free(8000) else ["--port", "0"]  # the bare command when its default port is free
    process, url = _start(cli_env, *args)
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        with urllib.request.urlopen(url + "api/models", timeout=30) as r:
            names = [m["name"] for m in json.load(r)["models"]]
        assert names == ["seed-2d", "seed-3d", "seed-correlated"]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert b"vaelab serve" in r.read()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and err.strip().endswith("terminated (SIGTERM)")


def test_serve_a_run_directory_in_two_workers(cli_env, trained_run):
    process, url = _start(cli_env, trained_run, "--port", "0", "--scatter-points", "50", "--workers", "2")
    try:
        with urllib.request.urlopen(url + "api/models", timeout=30) as r:
            models = {m["name"]: m for m in json.load(r)["models"]}
        assert list(models) == [trained_run.name]
        assert models[trained_run.name]["source"] == str(trained_run)
        request = urllib.request.Request(
            url + f"api/models/{trained_run.name}/decode",
            data=json.dumps({"z": [[0.0] * models[trained_run.name]["latent_dim"]]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            assert len(json.load(r)["images"]) == 1
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 130
    time.sleep(0.5)
    with pytest.raises(OSError):  # the forked worker went with it: nothing listens any more
        urllib.request.urlopen(url + "api/models", timeout=5)


def test_a_bug_is_a_500_with_a_json_body(client, served, monkeypatch):
    def broken(z):
        raise RuntimeError("a bug")

    monkeypatch.setattr(served["seed-2d"], "decode", broken)
    status, out = post(client, "/api/models/seed-2d/decode", {"z": [[0, 0]]})
    assert status == 500 and out["error"].startswith("internal error (RuntimeError)")
