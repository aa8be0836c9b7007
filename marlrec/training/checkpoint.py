"""What a checkpoint holds: algorithm state, RNG states, the saved training state."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tianshou.algorithm.algorithm_base import Algorithm

from marlrec.registry import MarlrecError
from marlrec.tianshou_compat import (
    is_optimizer_state_key,
    load_optimizer_states,
    optimizer_states,
)

STATE_FORMAT = 1
COLLECTOR_FIELDS = ("collect_step", "collect_episode", "collect_time")


def algorithm_state(algorithm: Algorithm) -> dict[str, Any]:
    """Networks, target networks, optimisers, LR schedulers and scalar counters.

    Tianshou's `Algorithm.state_dict` keeps only its own optimisers, not those of the
    per-agent algorithms inside a multi-agent one, nor counters such as DQN's update count.
    """
    tensors = torch.nn.Module.state_dict(algorithm)
    algorithms = _algorithms(algorithm)
    return {
        "tensors": {k: v for k, v in tensors.items() if not is_optimizer_state_key(k)},
        "optimizers": {n: optimizer_states(a) for n, a in algorithms.items()},
        "schedulers": {n: [s.state_dict() for s in a.lr_schedulers] for n, a in algorithms.items()},
        "scalars": {name: _scalars(m) for name, m in algorithm.named_modules()},
    }


def load_algorithm_state(algorithm: Algorithm, state: dict[str, Any]) -> None:
    torch.nn.Module.load_state_dict(algorithm, state["tensors"])
    for name, member in _algorithms(algorithm).items():
        load_optimizer_states(member, state["optimizers"][name])
        for scheduler, saved in zip(member.lr_schedulers, state["schedulers"][name], strict=True):
            scheduler.load_state_dict(saved)
    modules = dict(algorithm.named_modules())
    for name, scalars in state["scalars"].items():
        for key, value in scalars.items():
            setattr(modules[name], key, value)


def _algorithms(algorithm: Algorithm) -> dict[str, Algorithm]:
    return {name: m for name, m in algorithm.named_modules() if isinstance(m, Algorithm)}


def _scalars(module: torch.nn.Module) -> dict[str, bool | int | float]:
    """A module's plain scalar attributes (update counters, exploration rates, flags)."""
    return {
        key: value
        for key, value in vars(module).items()
        if type(value) in (bool, int, float) and key != "training"
    }


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: Path) -> dict[str, Any] | None:
    """The training state saved at the end of the last finished epoch, if any."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a foreign or damaged file: say which, not where in pickle
        raise MarlrecError(f"cannot read the training state {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise MarlrecError(f"{path} is not a training state this marlrec version can resume")
    return state
