"""`single`: one agent fills every slot of the slate (a gymnasium Env), the single-agent ablation.

The mechanics are the `slate` environment's with one role, `slate`: the same retrieval,
exploration, simulator, rewards and sessions, and the same flat observation (its role one-hot
has size 1). Each step fills one slot with one of the M candidates (Discrete(M)); the slate is
answered when it is full. The observation is a dict `{"obs": flat layout, "mask": available
candidates}`, which is how Tianshou's DQN applies an action mask (it reads `obs.mask` and
feeds `obs.obs` to the network) and what a masked PPO actor reads; the mask is also in
`info["action_mask"]`. Any single-agent Tianshou algorithm can train on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from marlrec.envs.aec import SlateAEC
from marlrec.envs.batched import BatchedSlateEnv, single_observation_space
from marlrec.envs.core import SlateConfig, SlateCore
from marlrec.envs.slate import SlateEnvironment
from marlrec.registry import PluginError

ROLE = "slate"  # the one agent's role name, as `spec.roles` and evaluation see it


@dataclass(kw_only=True)
class SingleConfig(SlateConfig):
    """The `slate` env's options with one fixed role: the agent fills all `slate_size` slots."""

    slate_size: int = 4
    """Slots in each slate, all filled by the one agent."""
    roles: list[str] = field(default_factory=lambda: [ROLE], init=False)
    slots_per_role: int = field(default=4, init=False)  # slate_size, set below
    role_terms: dict[str, str] = field(default_factory=dict, init=False)
    role_mix: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.slate_size < 1:
            raise PluginError(f"env.slate_size must be at least 1, got {self.slate_size}")
        self.slots_per_role = self.slate_size


class SingleSlateEnv(gym.Env):
    """One user's session with one agent; checked by gymnasium's `env_checker`."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, core: SlateCore, render_mode: str | None = None) -> None:
        super().__init__()
        self.core = core
        self.render_mode = render_mode
        # The one-role AEC session does the work; this class only speaks gymnasium.
        self.session = SlateAEC(core, [ROLE], render_mode)
        self.observation_space = single_observation_space(core)
        self.action_space = spaces.Discrete(core.n_candidates)

    @property
    def user(self) -> int:
        return self.session.user

    @property
    def slate_number(self) -> int:
        return self.session.slate_number

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        # The session draws users, exploration and clicks from the env's own generator.
        self.session.rng = self.np_random
        self.session.reset(options=options)
        observation = self._observe()
        return observation, {"action_mask": observation["mask"]}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        slates_before = self.session.slate_number
        self.session.step(int(action))
        observation = self._observe()
        info: dict[str, Any] = {"action_mask": observation["mask"]}
        if self.session.slate_number > slates_before:
            info.update(self.session.infos[ROLE])
        reward = float(self.session.rewards[ROLE])
        return observation, reward, bool(self.session.terminations[ROLE]), False, info

    def _observe(self) -> dict[str, np.ndarray]:
        observed = self.session.observe(ROLE)
        return {
            "obs": observed["observation"],
            "mask": observed["action_mask"].astype(bool),
        }

    def render(self) -> str | None:
        return self.session.render()


class SingleAgentEnvironment(SlateEnvironment):
    Config = SingleConfig

    def make(self) -> SingleSlateEnv:
        return SingleSlateEnv(self.core)

    def make_aec(self) -> SlateAEC:
        return SlateAEC(self.core, [ROLE])

    def make_vector(self, num_envs: int, *, stacked: bool = True) -> BatchedSlateEnv:
        """`num_envs` sessions stepped together as tensors, as
        `DummyVectorEnv([env.make()] * num_envs)` would step them (see `marlrec.envs.batched`)."""
        return BatchedSlateEnv(self.core, [ROLE], num_envs, single_agent=True, stacked=stacked)
