"""``vaelab serve``: load the models named at start, listen on a socket, run the app under uvicorn."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from vaelab.errors import VaelabError
from vaelab.serve.explorer import SCATTER_LIMIT, ServedModel, prepare

DEFAULT_MODELS = ("seed-2d", "seed-3d", "seed-correlated")  # the study's 2-D and 3-D models
MAX_MODELS = 16


def load_models(
    run_dirs: Sequence[Path] = (),
    pretrained: Sequence[str] = (),
    scatter_limit: int = SCATTER_LIMIT,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, ServedModel]:
    """The models to serve, by name: run directories (named after their folder) and shipped models;
    with neither, the shipped 2-D and 3-D models. Every source is checked before any model is prepared."""
    from vaelab import pretrained as shipped
    from vaelab.model import load_model
    from vaelab.runs import RunDir

    if len(run_dirs) + len(pretrained) > MAX_MODELS:
        raise VaelabError(f"at most {MAX_MODELS} models at once")
    if not run_dirs and not pretrained:
        pretrained = [name for name in DEFAULT_MODELS if name in shipped.available()]
        if not pretrained:
            raise VaelabError("no pretrained models are installed; give a RUN_DIR")
    sources: list[tuple[str, str, Path]] = [(name, "pretrained", shipped.path(name)) for name in pretrained]
    for run_dir in run_dirs:
        run = RunDir(Path(run_dir))
        if not Path(run_dir).is_dir():
            raise VaelabError(f"{run_dir} is not a directory (a run directory holds model.json and model.safetensors)")
        for name in ("model.json", "model.safetensors"):
            run.own(name)  # a link out of the run is refused before anything reads it
        sources.append((_url_name(Path(run_dir).resolve().name), str(run_dir), Path(run_dir)))
    loaded = []
    for name, source, folder in sources:
        model, config, meta = load_model(folder)
        loaded.append((name, source, model, config, meta))
    served: dict[str, ServedModel] = {}
    for name, source, model, config, meta in loaded:
        unique, k = name, 2
        while unique in served:
            unique, k = f"{name}-{k}", k + 1
        say(f"preparing {unique} ({source}, latent_dim {model.latent_dim}): encoding test images for the scatter")
        served[unique] = prepare(
            unique,
            model,
            source,
            config.data.name,
            config.data.data_dir or None,
            scatter_limit=scatter_limit,
            test_metrics=meta.get("test") if isinstance(meta.get("test"), dict) else None,
        )
        if served[unique].scatter.note:
            say(f"{unique}: no scatter ({served[unique].scatter.note})")
    return served


def _url_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port), or one line saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise VaelabError(f"--host {host}: not an address this machine can listen on ({err})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port just freed, not one in use
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise VaelabError(
                f"port {port} on {host} is in use; choose another with --port (0: any free port)"
            ) from None
        if err.errno == errno.EACCES:
            raise VaelabError(f"no permission to listen on port {port} of {host}; use a port above 1023") from None
        raise VaelabError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def one_thread() -> None:
    """Requests are small: many computed side by side beat one spread over the cores. Set before any
    model runs, so that no thread pool exists when :func:`serve` forks its workers."""
    torch.set_num_threads(1)


def serve(served: dict[str, ServedModel], sock: socket.socket, workers: int = 1) -> None:
    """Run the app on ``sock`` until Ctrl-C or SIGTERM, in ``workers`` processes sharing the socket
    (forked from this one, so the models and scatters are computed once)."""
    from vaelab.serve.api import create_app

    one_thread()
    app = create_app(served)
    children: list[int] = []
    if workers > 1 and not hasattr(os, "fork"):
        raise VaelabError("--workers above 1 needs a system with fork (Linux, macOS)")
    try:
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:  # a worker: serve until told to stop, then leave without the parent's cleanup
                code = 0
                try:
                    _die_with_parent()
                    _run(app, sock)
                except BaseException:  # Ctrl-C, SIGTERM: the parent reports
                    code = 1
                finally:
                    os._exit(code)
            children.append(pid)
        _run(app, sock)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _run(app, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2, server_header=False
    )
    uvicorn.Server(config).run(sockets=[sock])


def _die_with_parent() -> None:
    """A worker ends when the process that forked it ends, however it ends (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
