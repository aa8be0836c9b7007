"""HTTP load against `marlrec serve` and, in the same run, a trivial FastAPI endpoint.

    python benchmarks/serve.py --run-dir RUN --json serve.json [--seconds 60] [--quick]

Both servers run as uvicorn processes on loopback: marlrec over the run, and a FastAPI app that
returns a fixed body as large as marlrec's answer for k=10. Each is loaded by 1 client, then by
32 clients (threads, each with a keep-alive httpx client) for `--seconds` each; marlrec is asked
for random known users. Then marlrec alone is asked, by 1 client, for histories of random items
(10 to 200, uniformly), which nothing about a user can speed up. The table and the JSON give
p50/p99 latency, throughput, errors, and marlrec's throughput at 32 clients divided by the
trivial endpoint's. The load generator shares the machine with the server: on a small machine
the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

K = 10


def trivial_app(payload_file: Path) -> Any:
    """A FastAPI app answering GET /recommend with the same bytes every time."""
    from fastapi import FastAPI
    from fastapi.responses import Response

    body = payload_file.read_bytes()
    app = FastAPI()

    @app.get("/recommend")
    def recommend() -> Response:
        return Response(body, media_type="application/json")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(command: list[str], port: int) -> subprocess.Popen[bytes]:
    """A server process, once its /health answers."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"server on port {port} did not start")


def load(
    base: str, clients: int, seconds: float, users: tuple[int, int], n_items: int = 0
) -> dict[str, Any]:
    """`clients` threads asking as fast as they are answered for `seconds`: for random users
    in `users`, or with `n_items`, for histories of random items."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        rng = np.random.default_rng(i)
        with httpx.Client(base_url=base, timeout=30) as http:
            while time.perf_counter() < stop:
                params = {"user": int(rng.integers(*users)), "k": K}
                if n_items:
                    ids = rng.integers(0, n_items, int(rng.integers(10, 201)))
                    params = {"history": ",".join(map(str, ids)), "k": K}
                start = time.perf_counter()
                try:
                    ok = http.get("/recommend", params=params).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies[i].append(time.perf_counter() - start)
                errors[i] += not ok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    all_ms = np.concatenate([np.asarray(x) for x in latencies]) * 1e3
    return {
        "clients": clients,
        "requests": len(all_ms),
        "errors": int(sum(errors)),
        "throughput_rps": round(len(all_ms) / elapsed, 1),
        "p50_ms": round(float(np.percentile(all_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(all_ms, 99)), 2),
    }


def measure(base: str, seconds: float, users: tuple[int, int]) -> dict[str, Any]:
    load(base, 4, min(seconds, 3.0), users)  # warm-up
    return {
        "one_client": load(base, 1, seconds, users),
        "32_clients": load(base, 32, seconds, users),
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'server':<18}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    for name in ("marlrec", "trivial", "marlrec_histories"):
        for row in results[name].values():
            lines.append(
                f"{name:<18}{row['clients']:>8}{row['throughput_rps']:>10}"
                f"{row['p50_ms']:>9}{row['p99_ms']:>9}{row['errors']:>8}"
            )
    lines.append(f"marlrec / trivial throughput at 32 clients: {results['throughput_ratio']}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
    }


def run(run_dir: Path, seconds: float, options: list[str]) -> dict[str, Any]:
    python = sys.executable
    port, trivial_port = free_port(), free_port()
    marlrec = start(
        [python, "-m", "marlrec.cli", "serve", f"run_dir={run_dir}", f"port={port}", *options],
        port,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        users = known_users(base)
        sample = httpx.get(f"{base}/recommend", params={"user": users[0], "k": K}).content
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as payload:
            payload.write(sample)
        trivial = start(
            [python, __file__, "--trivial", payload.name, f"--port={trivial_port}"], trivial_port
        )
        try:
            results = {
                "marlrec": measure(base, seconds, users),
                "trivial": measure(f"http://127.0.0.1:{trivial_port}", seconds, users),
            }
            histories = load(base, 1, seconds, users, n_items=catalog_size(base))
        finally:
            trivial.terminate()
            trivial.wait()
            os.unlink(payload.name)
    finally:
        marlrec.terminate()
        marlrec.wait()
    ratio = results["marlrec"]["32_clients"]["throughput_rps"] / max(
        results["trivial"]["32_clients"]["throughput_rps"], 1e-9
    )
    return {
        **results,
        "marlrec_histories": {"one_client": histories},
        "throughput_ratio": round(ratio, 3),
        "response_bytes": len(sample),
        "seconds_per_phase": seconds,
        "serve_options": options,
        "machine": machine(),
    }


def known_users(base: str) -> tuple[int, int]:
    """The ids the service knows, [first, end): indices from 0, or a pseudonymised run's
    outside ids from 1 (MovieLens)."""
    first = 0 if _answers(base, "user", 0) else 1
    return first, _first_refused(base, "user", first)


def catalog_size(base: str) -> int:
    """How many items the service knows: the first item id a history query is refused for."""
    return _first_refused(base, "history", 0)


def _first_refused(base: str, field: str, known: int) -> int:
    """The first id after `known` that `?field=id` is refused for, by doubling, then
    bisection (the known ids are a range)."""
    low, high = known, known + 1
    while _answers(base, field, high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _answers(base, field, middle) else (low, middle)
    return high


def _answers(base: str, field: str, value: int) -> bool:
    return httpx.get(f"{base}/recommend", params={field: value, "k": 1}).status_code == 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a trained marlrec run")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--quick", action="store_true", help="5 s phases: a check that it works")
    parser.add_argument(
        "--serve-option", action="append", default=[], help="passed on, e.g. batching=false"
    )
    parser.add_argument("--trivial", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trivial is not None:  # the trivial server's own process
        import uvicorn

        uvicorn.run(trivial_app(args.trivial), port=args.port, log_level="warning")
        return
    if args.run_dir is None or args.json is None:
        parser.error("--run-dir and --json are required")
    results = run(args.run_dir, 5.0 if args.quick else args.seconds, args.serve_option)
    print(table(results))
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
