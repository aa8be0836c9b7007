"""Micro-batching on the event loop: the requests that arrive together are ranked in one pass.

A request's query is queued and the pass is scheduled for the loop's next turn, after every
request read in the same turn has queued its own; requests that arrive while a pass runs go in
the next one. A lone request waits for nothing. Passes run on the event loop's thread, not in a
worker thread: a forward pass is a few milliseconds of many small tensor operations, each of
which would otherwise hand Python's lock back and forth with the thread serving HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


class MicroBatcher(Generic[Q, R]):
    """Runs `run(queries) -> results` over the queries queued on one event loop."""

    def __init__(self, run: Callable[[list[Q]], list[R]], max_batch: int = 64) -> None:
        self._run = run
        self._max_batch = max_batch
        self._pending: list[tuple[Q, asyncio.Future[R]]] = []
        self._scheduled = False

    def submit(self, query: Q) -> asyncio.Future[R]:
        """`query`'s result, once the pass it joins has run; call it on the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((query, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._pass)
        return future

    def _pass(self) -> None:
        batch = self._pending[: self._max_batch]
        self._pending = self._pending[self._max_batch :]
        try:
            results = self._run([query for query, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # its client may have gone away meanwhile
                    future.set_result(result)
        if self._pending:
            asyncio.get_running_loop().call_soon(self._pass)
        else:
            self._scheduled = False
