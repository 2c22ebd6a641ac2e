"""The explorer's web app: a JSON API over the served models, its OpenAPI page, and the page itself.

Every answer that is not a success is JSON ``{"error": one line, "detail": ...}`` with a 4xx status
(5xx only for a bug). The models are fixed when the app is made; nothing a request names is read from
disk: the page's files and the API page's assets are read into memory at start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from vaelab.errors import VaelabError
from vaelab.serve.explorer import ServedModel
from vaelab.serve.images import from_png, mnist_layout, mosaic, to_png

MAX_BODY_BYTES = 4 * 2**20  # a request body beyond this is refused (413) before it is parsed
MAX_DECODE = 256  # latents per decode request
MAX_SAMPLE = 256  # prior draws per sample request
MAX_GRID = 30  # decoded grid: at most MAX_GRID x MAX_GRID tiles
LATENT_BOUND = 1e3  # |z| beyond this is no point of any trained latent space, and overflows networks
MAX_SEED = 2**63 - 1
INLINE_ROWS = 4  # a decode of at most this many latents runs on the event loop; more go to a worker thread

Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-LATENT_BOUND, le=LATENT_BOUND)]
Pixel = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=1.0)]
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecodeRequest(Strict):
    z: list[list[Coordinate]] = Field(
        min_length=1, max_length=MAX_DECODE, description="Latent codes, one row of latent_dim numbers per image."
    )
    format: Literal["png", "array"] = Field("png", description="png: base64 PNG text; array: C x H x W numbers.")


class EncodeRequest(Strict):
    image: list[list[Pixel]] | list[list[list[Pixel]]] | None = Field(
        None, description="An H x W grey image (or C x H x W) of numbers in [0, 1], the model's own size."
    )
    image_png: str | None = Field(
        None, max_length=MAX_BODY_BYTES, description="A PNG as base64 text (a data: URL too); resized to fit."
    )
    layout: Literal["as-is", "mnist"] = Field(
        "as-is", description="mnist: fit the ink into 20 x 20 and centre it by mass, as MNIST's digits are."
    )

    @model_validator(mode="after")
    def _one_image(self) -> EncodeRequest:
        if (self.image is None) == (self.image_png is None):
            raise ValueError("give exactly one of image (numbers) or image_png (base64 PNG)")
        return self


class SampleRequest(Strict):
    n: int = Field(16, strict=True, ge=1, le=MAX_SAMPLE, description="How many prior draws.")
    seed: int = Field(0, strict=True, ge=0, le=MAX_SEED)


class GridRequest(Strict):
    origin: list[Coordinate] = Field(description="The plane's origin (latent_dim numbers).")
    axes: list[list[Coordinate]] = Field(
        min_length=2, max_length=2, description="Its two directions e1, e2 (latent_dim numbers each)."
    )
    x: tuple[Coordinate, Coordinate] = Field((-3.0, 3.0), description="Range of a along e1: [low, high].")
    y: tuple[Coordinate, Coordinate] = Field((-3.0, 3.0), description="Range of b along e2: [low, high].")
    n: int = Field(15, strict=True, ge=1, le=MAX_GRID, description="Tiles per side.")


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status)


def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    return _json({"error": message, "detail": message if detail is None else detail}, status)


def _validation_errors(errors: list[Mapping[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    # the offending input may be NaN or huge: never echoed back
    clean = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")} for e in errors
    ]
    if any(e["type"] == "json_invalid" for e in clean):
        return 400, "the request body is not valid JSON", clean
    first = clean[0] if clean else {"loc": [], "msg": "invalid request"}
    where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in first["loc"][1:]).lstrip(".")
    message = f"{where}: {first['msg']}" if where else first["msg"]
    if len(clean) > 1:
        message += f" (and {len(clean) - 1} more)"
    return 422, message, clean


class BodyLimit:
    """Refuse a request body larger than ``limit`` bytes (413), by its Content-Length or as it streams."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                response = _error(413, f"the request body is larger than {self.limit // 2**20} MiB")
                return await response(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"the request body is larger than {self.limit // 2**20} MiB")
            return message

        await self.app(scope, limited, send)


def _read_static() -> dict[str, bytes]:
    folder = resources.files("vaelab.serve") / "static"
    return {
        item.name: item.read_bytes() for item in folder.iterdir() if item.is_file() and not item.name.startswith(".")
    }


def _read_docs_assets() -> dict[str, bytes]:
    """Swagger UI's files from the fastapi-offline package, so /docs works with no network."""
    try:
        folder = resources.files("fastapi_offline") / "static"
        return {
            name: (folder / name).read_bytes() for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
        }
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return {}


def create_app(models: Mapping[str, ServedModel]) -> FastAPI:
    """The web app serving ``models`` (name -> prepared model), fixed for its lifetime."""
    served = dict(models)
    scatters = {name: _scatter_json(m) for name, m in served.items()}  # computed once, served as bytes
    static = _read_static()
    docs_assets = _read_docs_assets()
    app = FastAPI(
        title="vaelab serve",
        summary="Explore the latent spaces of trained VAEs: decode, encode, sample, scatter, decoded grids.",
        version=_version(),
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # FastAPI's words for bytes not UTF-8
            return _error(400, "the request body is not valid JSON")
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, detail = _validation_errors(exc.errors())
        return _error(status, message, detail)

    @app.exception_handler(VaelabError)
    async def _refused(request: Request, exc: VaelabError) -> JSONResponse:
        return _error(422, " ".join(str(exc).split()))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:  # Starlette re-raises it: the server logs it
        return _error(500, f"internal error ({type(exc).__name__}); the server's log has the traceback")

    def model(name: str) -> ServedModel:
        if name not in served:
            raise HTTPException(404, f"no model named {name!r} is served; served: {', '.join(served)}")
        return served[name]

    def latents(m: ServedModel, rows: list[list[float]], what: str = "z") -> torch.Tensor:
        for i, row in enumerate(rows):
            if len(row) != m.latent_dim:
                raise VaelabError(f"{what}[{i}] has {len(row)} numbers; {m.name} has latent_dim {m.latent_dim}")
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), m.latent_dim)

    # ------------------------------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(
            static["index.html"], media_type=STATIC_TYPES[".html"], headers={"Content-Security-Policy": PAGE_POLICY}
        )

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, f"no file {name!r}")
        kind = STATIC_TYPES.get(name[name.rfind(".") :], "application/octet-stream")
        return Response(static[name], media_type=kind, headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if not docs_assets:
            return HTMLResponse(
                '<p>The API page needs the fastapi-offline package; the API itself is described at <a href="/openapi.json">/openapi.json</a>.</p>'
            )
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="vaelab serve - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in docs_assets:
            raise HTTPException(404, f"no file {name!r}")
        kind = {"js": "text/javascript", "css": "text/css", "png": "image/png"}[name.rsplit(".", 1)[1]]
        return Response(docs_assets[name], media_type=kind)

    # ------------------------------------------------------------------------------------ the API

    @app.get("/api/models", summary="The served models")
    async def list_models() -> JSONResponse:
        return _json({"models": [m.info() for m in served.values()]})

    @app.get("/api/models/{name}", summary="One model: latent size, image shape, prior, data set")
    async def describe(name: str) -> JSONResponse:
        return _json(model(name).info())

    @app.get("/api/models/{name}/prior", summary="The prior: a Gaussian's mean and covariance, or 2-D density contours")
    async def prior(name: str) -> JSONResponse:
        return _json(model(name).prior)

    @app.get(
        "/api/models/{name}/scatter",
        summary="Posterior means of test images (a fixed subset of at most 5,000), with their labels",
    )
    async def scatter(name: str) -> Response:
        return Response(scatters[model(name).name], media_type="application/json")

    @app.post("/api/models/{name}/decode", summary="Decode latent codes into mean images")
    async def decode(name: str, request: DecodeRequest) -> JSONResponse:
        m = model(name)
        z = latents(m, request.z)

        def work() -> JSONResponse:
            out = m.decode(z)
            return _json(
                {"format": request.format, "shape": list(m.image_shape), "images": _images(out, request.format)}
            )

        # the pointer's single point takes under a millisecond: answered on the event loop, without a thread hop
        return work() if len(z) <= INLINE_ROWS else await run_in_threadpool(work)

    @app.post(
        "/api/models/{name}/encode", summary="Posterior mean, scale and covariance of an image, and its reconstruction"
    )
    async def encode(name: str, request: EncodeRequest) -> JSONResponse:
        return await run_in_threadpool(_encode, model(name), request)

    @app.post("/api/models/{name}/sample", summary="Decode draws from the prior")
    async def sample(name: str, request: SampleRequest) -> JSONResponse:
        return await run_in_threadpool(_sample, model(name), request)

    @app.post(
        "/api/models/{name}/grid",
        summary="Decode an n x n grid over a plane z = origin + a e1 + b e2, as one PNG (the manifold figures)",
    )
    async def grid(name: str, request: GridRequest) -> JSONResponse:
        m = model(name)
        origin = latents(m, [request.origin], "origin")[0]
        axes = latents(m, request.axes, "axes")
        return _json(
            await run_in_threadpool(_grid, m, m.plane(origin, axes, request.x, request.y, request.n), request.n)
        )

    @app.get(
        "/api/models/{name}/cross-section",
        summary="The study's cross-section: decoded (z0, z1) grid at z2 = value, other dimensions 0",
    )
    async def cross_section(
        name: str,
        value: Annotated[float, Query(ge=-LATENT_BOUND, le=LATENT_BOUND, allow_inf_nan=False)] = 0.0,
        n: Annotated[int, Query(ge=1, le=MAX_GRID)] = 15,
        span: Annotated[float, Query(gt=0, le=LATENT_BOUND, allow_inf_nan=False)] = 3.0,
    ) -> JSONResponse:
        m = model(name)
        if m.latent_dim < 3:
            raise VaelabError(f"cross-sections at fixed z2 need latent_dim >= 3; {m.name} has {m.latent_dim}")
        origin = torch.zeros(m.latent_dim)
        origin[2] = value
        axes = torch.eye(m.latent_dim)[:2]
        answer = await run_in_threadpool(_grid, m, m.plane(origin, axes, (-span, span), (-span, span), n), n)
        answer.update(value=value, span=span)
        return _json(answer)

    return app


def _scatter_json(m: ServedModel) -> bytes:
    s = m.scatter
    content = {
        "dataset": s.dataset,
        "class_names": s.class_names,
        "indices": s.indices.tolist(),
        "labels": s.labels.tolist(),
        "means": np.round(s.means.astype(np.float64), 4).tolist(),
        "note": s.note,
    }
    return json.dumps(content, separators=(",", ":")).encode()


def _images(batch: torch.Tensor, fmt: str = "png") -> list[Any]:
    if fmt == "array":
        return [np.round(image.numpy().astype(np.float64), 4).tolist() for image in batch]
    return [to_png(image) for image in batch]


def _encode(m: ServedModel, request: EncodeRequest) -> JSONResponse:
    x = from_png(request.image_png, m.image_shape) if request.image_png is not None else _image_tensor(request.image, m)
    if request.layout == "mnist":
        x = mnist_layout(x)
    out = m.encode(x.unsqueeze(0))
    return _json(
        {
            "mean": out["mean"][0].tolist(),
            "scale": out["scale"][0].tolist(),
            "cov": out["cov"][0].tolist(),
            "reconstruction": to_png(out["reconstruction"][0]),
            "input": to_png(x),
        }
    )


def _sample(m: ServedModel, request: SampleRequest) -> JSONResponse:
    out, z = m.sample(request.n, request.seed)
    rounded = None if z is None else np.round(z.numpy().astype(np.float64), 4).tolist()
    return _json({"images": _images(out), "z": rounded})


def _grid(m: ServedModel, z: torch.Tensor, n: int) -> dict[str, Any]:
    return {"n": n, "tile": list(m.image_shape[1:]), "image": to_png(mosaic(m.decode(z), n, n))}


def _image_tensor(nested: list, m: ServedModel) -> torch.Tensor:
    """An H x W (grey) or C x H x W image of numbers as a C x H x W tensor, if it has the model's shape."""
    three = bool(nested) and bool(nested[0]) and isinstance(nested[0][0], list)
    expected = m.image_shape[1:] if m.image_shape[0] == 1 and not three else m.image_shape
    want = " x ".join(map(str, m.image_shape[1:] if m.image_shape[0] == 1 else m.image_shape))

    def shape_of(value: Any, depth: int) -> tuple[int, ...] | None:
        if depth == 0:
            return ()
        inner = {shape_of(v, depth - 1) for v in value}
        return (len(value), *inner.pop()) if len(inner) == 1 and None not in inner else None

    shape = shape_of(nested, len(expected)) if nested and nested[0] else None
    if shape != tuple(expected):
        got = "ragged" if shape is None else " x ".join(map(str, shape))
        raise VaelabError(f"image is {got}; {m.name} takes {want} images (numbers in [0, 1])")
    x = torch.tensor(nested, dtype=torch.float32)
    return x.unsqueeze(0) if x.dim() == 2 else x


def _version() -> str:
    import vaelab

    return str(getattr(vaelab, "__version__", "0"))
