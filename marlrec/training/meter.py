"""Time per update and peak memory of a training run, for comparing encoder modes."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


@dataclass
class UpdateMeter:
    """Optimizer steps taken and wall seconds spent while it was active."""

    device: torch.device
    steps: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, float | str]:
        return {
            "optimizer_steps": float(self.steps),
            "seconds_per_update": self.seconds / max(1, self.steps),
            "peak_memory_mb": peak_memory_mb(self.device),
            "peak_memory_of": "cuda allocated" if self.device.type == "cuda" else "process RSS",
        }


@contextlib.contextmanager
def measured_updates(device: torch.device) -> Iterator[UpdateMeter]:
    """Count every optimizer step (imitation and RL) and the time of the block around them."""
    meter = UpdateMeter(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def count(*_: object) -> None:
        meter.steps += 1

    handle = register_optimizer_step_post_hook(count)
    started = time.perf_counter()
    try:
        yield meter
    finally:
        meter.seconds = time.perf_counter() - started
        handle.remove()


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on a GPU; else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes there, KiB here
