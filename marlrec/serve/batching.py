"""Micro-batching without a wait: requests that arrive while a pass runs go in the next one.

One request at a time is ranked at once (no added latency); under load, every request that
queued during a forward pass is ranked together in the following one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


@dataclass
class _Job(Generic[Q, R]):
    query: Q
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: R | None = None
    error: BaseException | None = None


class MicroBatcher(Generic[Q, R]):
    """Runs `run(queries) -> results` over whatever queued; one caller at a time leads a pass."""

    def __init__(self, run: Callable[[list[Q]], list[R]], max_batch: int = 64) -> None:
        self._run = run
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Job[Q, R]] = []
        self._busy = False

    def submit(self, query: Q) -> R:
        job: _Job[Q, R] = _Job(query)
        with self._lock:
            self._pending.append(job)
            if not self._busy:
                self._busy = job.lead = True
        if not job.lead:
            job.done.wait()  # woken with a result, or to lead the next pass
        if job.lead and job.result is None and job.error is None:
            self._pass()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _pass(self) -> None:
        with self._lock:
            batch = self._pending[: self._max_batch]
            self._pending = self._pending[self._max_batch :]
        try:
            for job, result in zip(batch, self._run([j.query for j in batch]), strict=True):
                job.result = result
        except Exception as exc:
            for job in batch:
                job.error = exc
        for job in batch:
            job.done.set()
        with self._lock:
            if self._pending:
                successor = self._pending[0]
                successor.lead = True
                successor.done.set()
            else:
                self._busy = False
