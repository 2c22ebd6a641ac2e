"""Load test of `vaelab serve`'s decode round trip: N concurrent clients for S seconds.

Starts `python -m vaelab serve --pretrained MODEL --port 0` (torch on one thread, as the command sets it),
then runs N clients on one asyncio loop, each with its own keep-alive connection and one request in
flight, as the page sends them while the pointer moves: a client sends a decode of one random latent
point, waits for the answer, and sends the next at most --rate times a second (0: at once, a closed
loop with no pause). Prints the latency percentiles of the whole round trip (request sent to answer
parsed), the request rate and the errors (any answer other than 200 with one image, or a broken
connection), then stops the server.

    python benchmarks/serve_load.py                      # 20 clients, 30 s, pointer rate 60/s
    python benchmarks/serve_load.py --rate 0             # closed loop: as fast as the server answers
    python benchmarks/serve_load.py --json

The client is a few lines of asyncio streams rather than an HTTP library, so that on a 2-core machine
the load generator takes as little CPU from the server as it can; it shares the cores all the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def start_server(model: str, scatter_points: int, workers: int) -> tuple[subprocess.Popen, str, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "vaelab", "serve", "--pretrained", model, "--port", "0"]
        + ["--scatter-points", str(scatter_points), "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise SystemExit(f"the server ended: {process.stderr.read()}")
        found = re.search(r"http://([\d.]+):(\d+)/", line)
        if found:
            return process, found.group(1), int(found.group(2))
    process.kill()
    raise SystemExit("the server did not start within 300 s")


async def client(
    host: str, port: int, model: str, dim: int, deadline: float, rate: float, seed: int, out: dict
) -> None:
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection(host, port)
    period = 1.0 / rate if rate > 0 else 0.0
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            body = json.dumps({"z": [[round(rng.uniform(-3, 3), 4) for _ in range(dim)]]}).encode()
            request = (
                f"POST /api/models/{model}/decode HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            try:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                payload = json.loads(await reader.readexactly(length))
                ok = status == 200 and len(payload.get("images", ())) == 1
            except (OSError, asyncio.IncompleteReadError, ValueError, AttributeError):
                ok = False
                out["errors"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            elapsed = time.perf_counter() - started
            if ok:
                out["latencies"].append(elapsed)
            else:
                out["errors"] += 1
            if period > elapsed:
                await asyncio.sleep(period - elapsed)
    finally:
        writer.close()


async def run_load(host: str, port: int, model: str, dim: int, clients: int, seconds: float, rate: float) -> dict:
    out = {"latencies": [], "errors": 0}
    # a short warm-up, not counted
    await client(host, port, model, dim, time.perf_counter() + 1.0, rate, -1, {"latencies": [], "errors": 0})
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(client(host, port, model, dim, deadline, rate, k, out) for k in range(clients)))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (its forked workers), seconds (Linux)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    total = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="seed-2d")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second per client at most (0: no pause)")
    parser.add_argument("--scatter-points", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="server processes (vaelab serve --workers)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    process, host, port = start_server(args.model, args.scatter_points, args.workers)
    try:
        import urllib.request

        with urllib.request.urlopen(f"http://{host}:{port}/api/models/{args.model}", timeout=30) as r:
            dim = json.load(r)["latent_dim"]
        cpu_before = cpu_seconds(process.pid)
        started = time.perf_counter()
        out = asyncio.run(run_load(host, port, args.model, dim, args.clients, args.seconds, args.rate))
        wall = time.perf_counter() - started
        server_cpu = cpu_seconds(process.pid) - cpu_before
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    lat = out["latencies"]
    result = {
        "model": args.model,
        "clients": args.clients,
        "seconds": args.seconds,
        "rate_per_client": args.rate,
        "requests": len(lat),
        "errors": out["errors"],
        "requests_per_second": len(lat) / wall,
        "p50_ms": 1e3 * statistics.median(lat) if lat else None,
        "p90_ms": 1e3 * percentile(lat, 90) if lat else None,
        "p99_ms": 1e3 * percentile(lat, 99) if lat else None,
        "max_ms": 1e3 * max(lat) if lat else None,
        "server_cpu_ms_per_request": 1e3 * server_cpu / max(1, len(lat) + out["errors"]),
        "server_cores_busy": server_cpu / wall,
        "load_average_1min": os.getloadavg()[0],
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
    }
    if args.json:
        print(json.dumps(result))
        return
    rate = f"at most {args.rate:g}/s each" if args.rate > 0 else "closed loop, no pause"
    print(
        f"{args.model}: {args.clients} clients ({rate}) for {args.seconds:g} s on {result['cores']} cores, {result['cpu']}"
    )
    if lat:
        print(
            f"decode round trip: p50 {result['p50_ms']:.1f} ms, p90 {result['p90_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms; "
            f"{len(lat)} requests ({result['requests_per_second']:.0f}/s), {out['errors']} errors"
        )
        print(
            f"server CPU {result['server_cpu_ms_per_request']:.2f} ms per request ({result['server_cores_busy']:.2f} cores busy); "
            f"machine load average {result['load_average_1min']:.1f}"
        )
    else:
        print(f"no request succeeded; {out['errors']} errors")


if __name__ == "__main__":
    main()
