"""``vaelab serve``: a latent-space explorer in the browser over a JSON API (FastAPI, uvicorn).

:func:`load_models` prepares the models named at start (scatter of test-set latent means, the prior's
geometry), :func:`create_app` makes the web app, :func:`serve` runs it. The page (static/) is plain
HTML, CSS and JavaScript shipped in the package: no build step, nothing fetched at run time.
"""

from vaelab.serve.api import create_app
from vaelab.serve.explorer import ServedModel, prepare
from vaelab.serve.server import listen, load_models, serve, url

__all__ = ["ServedModel", "create_app", "listen", "load_models", "prepare", "serve", "url"]
