"""`marlrec serve`: a trained run behind a small JSON HTTP API (standard library only).

GET /recommend?user=3&k=10  ->  {"user": 3, "items": [{"item", "text", "why"}, ...]}
GET /health                 ->  {"status": "ok", "run_dir": ..., "n_users": ..., "n_items": ...}
"""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from marlrec.pipeline import Pipeline
from marlrec.recommend import load_run, recommend_for
from marlrec.registry import MarlrecError


def make_server(run_dir: Path, host: str, port: int) -> ThreadingHTTPServer:
    """Load the run once; every request then ranks for one user."""
    pipeline = load_run(run_dir)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            try:
                if url.path == "/health":
                    self._send(HTTPStatus.OK, health(pipeline, run_dir))
                elif url.path == "/recommend":
                    self._send(HTTPStatus.OK, answer(pipeline, parse_qs(url.query)))
                else:
                    self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {url.path}"})
            except MarlrecError as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def health(pipeline: Pipeline, run_dir: Path) -> dict[str, Any]:
    data = pipeline.data
    return {
        "status": "ok",
        "run_dir": str(run_dir),
        "n_users": data.n_users,
        "n_items": data.n_items,
    }


def answer(pipeline: Pipeline, query: dict[str, list[str]]) -> dict[str, Any]:
    try:
        user = int(query["user"][0])
        k = int(query.get("k", ["10"])[0])
    except (KeyError, ValueError):
        raise MarlrecError("expected /recommend?user=<int>&k=<int>") from None
    if not 1 <= k <= 1000:
        raise MarlrecError(f"k must be between 1 and 1000, got {k}")
    return {"user": user, "items": recommend_for(pipeline, user, k)}
