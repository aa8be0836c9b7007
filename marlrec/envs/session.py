"""What every form of the slate env shares: its observation space and where sessions start."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from gymnasium import spaces

from marlrec.data import RecData

if TYPE_CHECKING:
    from marlrec.envs.core import SlateCore


def slate_observation_space(core: SlateCore) -> spaces.Dict:
    """Every agent's observation: the flat layout and its action mask (identical for all)."""
    return spaces.Dict(
        {
            "observation": spaces.Box(-np.inf, np.inf, (core.layout.size,), np.float32),
            "action_mask": spaces.Box(0, 1, (core.n_candidates,), np.int8),
        }
    )


def session_users(data: RecData) -> np.ndarray:
    """Users a session can start from: those with a training history."""
    return np.flatnonzero([len(h) > 0 for h in data.train_histories])
