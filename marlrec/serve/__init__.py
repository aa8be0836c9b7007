"""`marlrec serve`: a trained run behind a FastAPI service (uvicorn).

GET|POST /recommend   top-k by user id, by a history of item ids or by text
GET /explain          the same, each item with its role, score, rank, reward terms, neighbours
                      (and a language model's sentence with explain.writer=hf)
GET /health           status and model version
GET /metrics          Prometheus text: requests, errors and latency per route
GET /docs             the OpenAPI documentation
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from marlrec.registry import MarlrecError
from marlrec.serve.writer import WriterOptions


def check_port(host: str, port: int) -> None:
    """A one-line error now, rather than a traceback from uvicorn, if the port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc}"
            raise MarlrecError(f"port {port} on {host} {why}") from None


def serve(
    run_dir: Path,
    host: str,
    port: int,
    workers: int,
    batching: bool = True,
    expose_history: bool = False,
    model: str = "fp32",
    reload_every: float = 1.0,
    writer: WriterOptions | None = None,
) -> None:
    """Load the run in each of `workers` processes and serve it until interrupted; with
    `batching`, concurrent requests are ranked together (see `marlrec.serve.batching`); with
    `expose_history`, a user's explanations name the items of their history they are like;
    `model` names the scoring networks: fp32 or an export (`marlrec export`). Every
    `reload_every` seconds (0: never) each worker looks for a new version of the run
    (`marlrec update`) and switches to it. `writer`: the language model writing each
    explained item's sentence (none by default)."""
    import uvicorn

    from marlrec.serve.app import (
        BATCHING_ENV,
        EXPOSE_HISTORY_ENV,
        MODEL_ENV,
        RELOAD_ENV,
        RUN_DIR_ENV,
        WRITER_ENV,
        create_app,
        writer_environment,
    )
    from marlrec.serve.service import Service

    if workers < 1:
        raise MarlrecError(f"workers must be at least 1, got {workers}")
    check_port(host, port)
    # Loaded here even with several workers, so that a broken run fails before they start.
    writer = writer or WriterOptions()
    service = Service.from_run(run_dir, batching, expose_history, model, writer)
    if reload_every > 0 and workers == 1:  # with more, each worker watches on its own
        service.watch(reload_every)
    app = create_app(service)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    os.environ[BATCHING_ENV] = "1" if batching else "0"
    os.environ[EXPOSE_HISTORY_ENV] = "1" if expose_history else "0"
    os.environ[MODEL_ENV] = model
    os.environ[RELOAD_ENV] = str(reload_every)
    os.environ[WRITER_ENV] = writer_environment(writer)
    print(
        f"marlrec: serving {run_dir} ({model}) on http://{host}:{port} (docs at /docs)", flush=True
    )
    uvicorn.run(
        app if workers == 1 else "marlrec.serve.app:from_environment",
        factory=workers > 1,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,  # requests are counted at /metrics
    )
