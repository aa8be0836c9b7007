"""The FastAPI application: routes, request and response models, errors and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marlrec.serve import service as svc
from marlrec.serve.writer import WriterOptions

# How uvicorn's worker processes find the run, whether to batch and to show histories.
RUN_DIR_ENV, BATCHING_ENV = "MARLREC_SERVE_RUN_DIR", "MARLREC_SERVE_BATCHING"
EXPOSE_HISTORY_ENV = "MARLREC_SERVE_EXPOSE_HISTORY"
MODEL_ENV = "MARLREC_SERVE_MODEL"  # fp32 or an export's format
RELOAD_ENV = "MARLREC_SERVE_RELOAD_EVERY"  # seconds between looks for a new version, 0: never
WRITER_ENV = "MARLREC_SERVE_EXPLAIN"  # the explain.* options, as JSON


class RecommendRequest(BaseModel):
    """Exactly one of `user`, `history` (item ids, oldest first) and `text`; ids are JSON
    integers (no strings, floats or booleans); an unknown field is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")

    user: StrictInt | StrictStr | None = Field(
        None, description="a known user's id (their outside id when the run is pseudonymised)"
    )
    history: list[StrictInt] | None = Field(None, description="item ids consumed, oldest first")
    text: str | None = Field(None, description="what the user is looking for, in words")
    k: StrictInt = Field(10, description="how many items, 1 to the catalog size")


class Item(BaseModel):
    item: int
    text: str
    placed_by: str = Field(description="the role whose scores placed the item, or retrieval")
    score: float = Field(description="the item's score in that scoring")


class Neighbour(BaseModel):
    item: int
    text: str
    similarity: float = Field(description="cosine between the two items' embeddings")


class Explained(Item):
    stage: str = Field(description="slate (chosen by a role), after_slate or retrieval")
    rank: int = Field(description="1-based rank in the scoring that placed it")
    reward_terms: dict[str, float] = Field(
        description="weighted change of each reward term if the user clicked it (slate only)"
    )
    nearest_history: list[Neighbour]
    sentence: str | None = Field(
        None, description="one sentence on the above by a language model (explain.writer=hf)"
    )


class Recommendation(BaseModel):
    model_version: str
    items: list[Item]


class Explanation(BaseModel):
    model_version: str
    items: list[Explained]


class NewItem(BaseModel):
    """A new item: its id, its title and any other text fields (strings), e.g. `genres`."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="the item's own id, unique among added items")
    title: str = Field(description="the item's title, the start of its text")


class NewItems(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[NewItem] = Field(min_length=1, description="the items to add")


class AddedItem(BaseModel):
    item: int = Field(description="the item number to recommend and query it by")
    id: str
    text: str = Field(description="the text its embedding was computed from")


class Added(BaseModel):
    model_version: str
    items: list[AddedItem]


class Health(BaseModel):
    status: str
    model_version: str


class Metrics:
    """Requests, errors and latency per route, in a registry of this app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "marlrec_requests", "Requests served", ["route", "status"], registry=self.registry
        )
        self.errors = Counter(
            "marlrec_errors", "Requests answered 4xx or 5xx", ["route"], registry=self.registry
        )
        self.latency = Histogram(
            "marlrec_request_seconds", "Request latency", ["route"], registry=self.registry
        )


def create_app(service: svc.Service) -> FastAPI:
    app = FastAPI(title="marlrec", version=service.version)
    metrics = Metrics()
    _add_error_handlers(app)
    app.add_middleware(MeasureRequests, metrics=metrics)

    async def recommend(query: RecommendRequest) -> Response:
        answer = await service.answer_soon(_query(query))
        items = [Item(**service.item_row(row)) for row in answer.placements]
        return _json(Recommendation(model_version=service.version, items=items))

    # Answers are written by `_json`: `response_model` documents them in the OpenAPI schema.
    @app.get("/recommend", response_model=Recommendation)
    async def get_recommend(
        user: str | None = None,
        history: Annotated[str | None, Query(description="comma-separated item ids")] = None,
        text: str | None = None,
        k: int = 10,
    ) -> Response:
        return await recommend(RecommendRequest(user=user, history=_ids(history), text=text, k=k))

    @app.post("/recommend", response_model=Recommendation)
    async def post_recommend(query: RecommendRequest) -> Response:
        return await recommend(query)

    @app.get("/explain", response_model=Explanation)
    async def explain(
        user: str | None = None,
        history: Annotated[str | None, Query(description="comma-separated item ids")] = None,
        text: str | None = None,
        k: int = 10,
    ) -> Response:
        query = RecommendRequest(user=user, history=_ids(history), text=text, k=k)
        # Explaining runs the reward terms and, with a writer, a language model: in a thread.
        answer = await service.answer_soon(_query(query))
        rows = await asyncio.to_thread(service.explain, answer)
        items = [Explained(**r) for r in rows]
        # `sentence` is left out, not null, when no writer is set.
        return _json(Explanation(model_version=service.version, items=items), exclude_none=True)

    @app.post("/items")
    def post_items(request: NewItems) -> Added:
        rows = [_text_fields(item) for item in request.items]
        numbers = service.add_items(rows)
        text = service.p.data.item_text
        added = [
            AddedItem(item=n, id=row["id"].strip(), text=text[n])
            for n, row in zip(numbers, rows, strict=True)
        ]
        return Added(model_version=service.version, items=added)

    @app.get("/health")
    async def health() -> Health:
        return Health(status="ok", model_version=service.version)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _json(answer: BaseModel, exclude_none: bool = False) -> Response:
    """`answer` as JSON, validated once: returning the model would have FastAPI dump it,
    validate it against the route's model again and encode it once more."""
    return Response(
        answer.model_dump_json(exclude_none=exclude_none), media_type="application/json"
    )


def _query(request: RecommendRequest) -> svc.Query:
    history = tuple(request.history) if request.history is not None else None
    return svc.Query(k=request.k, user=request.user, history=history, text=request.text)


def _text_fields(item: NewItem) -> dict[str, str]:
    fields = item.model_dump()
    wrong = [key for key, value in fields.items() if not isinstance(value, str)]
    if wrong:
        raise svc.BadQuery(f"items: field {wrong[0]!r} of item {item.id!r} must be text", 422)
    return fields


def _ids(history: str | None) -> list[int] | None:
    if history is None:
        return None
    try:
        return [int(part) for part in history.split(",") if part.strip()]
    except ValueError:
        raise svc.BadQuery("history must be comma-separated integer item ids", 422) from None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    async def bad_query(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, svc.BadQuery)
        return _error(exc.status, str(exc))

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body",))
        return _error(422, f"{where}: {first.get('msg', 'invalid')}")

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    app.add_exception_handler(svc.BadQuery, bad_query)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)


class MeasureRequests:
    """ASGI middleware counting each request and its latency by route.

    Plain ASGI rather than `@app.middleware("http")`, whose request and response wrappers cost
    about a third of a millisecond a request. The route is read after the app ran: the router
    sets it on the request's scope.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server answers if the app raises before it responds

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route).inc()


def from_environment() -> Any:
    """The app over the run named by MARLREC_SERVE_RUN_DIR: uvicorn's factory in each worker."""
    batching = os.environ.get(BATCHING_ENV, "1") == "1"
    expose = os.environ.get(EXPOSE_HISTORY_ENV, "0") == "1"
    model = os.environ.get(MODEL_ENV, "fp32")
    writer = WriterOptions(**json.loads(os.environ.get(WRITER_ENV, "{}")))
    run_dir = Path(os.environ[RUN_DIR_ENV])
    service = svc.Service.from_run(run_dir, batching, expose, model, writer)
    reload_every = float(os.environ.get(RELOAD_ENV, "0"))
    if reload_every > 0:
        service.watch(reload_every)
    return create_app(service)


def writer_environment(writer: WriterOptions) -> str:
    """`writer` as `WRITER_ENV` holds it for uvicorn's worker processes."""
    return json.dumps(dataclasses.asdict(writer))
