"""`slate`: role agents take turns filling one slate from retrieved candidates (PettingZoo AEC).

The plugin puts the parts together: `SlateCore` (`marlrec.envs.core`) holds the state,
retrieval, candidates, observations and the answered slate's outcome as tensor operations over
many users, with exploration draws from `marlrec.envs.exploration`; `make()` gives the per-user
reference env `SlateAEC` (`marlrec.envs.aec`); `make_vector` steps many users at once
(`marlrec.envs.batched`); `logged_choices` builds imitation data (`marlrec.envs.logged`).
Evaluation ranks the catalog through the core (`marlrec.evaluation.rankers.AgentRanker`).
`slate_parallel` and `single` reuse the core.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from marlrec.envs import EnvContext, Environment, EnvSpec, LoggedChoices, logged
from marlrec.envs.aec import SlateAEC
from marlrec.envs.core import SlateConfig, SlateCore
from marlrec.registry import PluginError


class SlateEnvironment(Environment):
    Config = SlateConfig

    def __init__(self, config: Any, *, ctx: EnvContext) -> None:
        super().__init__(config, ctx=ctx)
        self.slate_config = self.core_config(config)
        validate_slate_config(self.slate_config, ctx)
        self.core = SlateCore(ctx, self.slate_config)

    def core_config(self, config: Any) -> SlateConfig:
        """The `SlateConfig` behind this plugin's own config (the same object here)."""
        return config

    @property
    def roles(self) -> list[str]:
        return list(self.slate_config.roles)

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            tuple(self.roles),
            self.core.layout,
            self.ctx.item_emb,
            self.ctx.state,
            self.ctx.item_tower,
        )

    @property
    def session_steps(self) -> int:
        return self.core.max_slates * self.core.slate_size  # a step fills at least one slot

    def make(self) -> Any:
        return SlateAEC(self.core, self.roles)

    def make_vector(self, num_envs: int, *, stacked: bool = True) -> Any:
        """`num_envs` sessions stepped together as tensors: what
        `DummyVectorEnv([PettingZooEnv(env.make())] * num_envs)` plays, much faster; observations
        come stacked in one Batch unless `stacked=False` (see `marlrec.envs.batched`)."""
        from marlrec.envs.batched import BatchedSlateEnv

        return BatchedSlateEnv(self.core, self.roles, num_envs, stacked=stacked)

    def logged_choices(
        self, histories: list[np.ndarray], targets: np.ndarray, rng: np.random.Generator
    ) -> LoggedChoices:
        """Each history's next logged item among its retrieved candidates, at a random turn
        (see `marlrec.envs.logged`)."""
        return logged.logged_choices(self.core, histories, targets, rng)


def validate_slate_config(config: SlateConfig, ctx: EnvContext) -> None:
    """One-line `PluginError`s for a config the environment cannot run."""
    if len(config.roles) < 1 or len(set(config.roles)) != len(config.roles):
        raise PluginError(f"env.roles must be distinct role names, got {config.roles}")
    if config.slots_per_role < 1 or config.max_slates < 1:
        raise PluginError("env.slots_per_role and env.max_slates must be at least 1")
    if config.history_len < 0:
        raise PluginError(f"env.history_len must be at least 0, got {config.history_len}")
    slate_size = len(config.roles) * config.slots_per_role
    if not slate_size <= config.n_candidates < ctx.data.n_items:
        raise PluginError(
            f"env.n_candidates={config.n_candidates} must be at least the slate size "
            f"({slate_size}) and below the catalog size ({ctx.data.n_items})"
        )
    for key in ("explore_share", "explore_long_tail"):
        value = getattr(config, key)
        if not 0.0 <= value <= 1.0:
            raise PluginError(f"env.{key} must be in [0, 1], got {value}")
    _validate_role_terms(config, ctx)


def _validate_role_terms(config: SlateConfig, ctx: EnvContext) -> None:
    if not math.isfinite(config.role_mix):
        raise PluginError(f"env.role_mix must be a finite number, got {config.role_mix}")
    for role, term in config.role_terms.items():
        if role not in config.roles:
            raise PluginError(
                f"env.role_terms names role '{role}', which is not in env.roles {config.roles}"
            )
        if term not in ctx.rewards:
            raise PluginError(
                f"env.role_terms.{role}='{term}' is not a selected reward "
                f"(reward=[{','.join(ctx.rewards)}]); add it, with weight 0 to keep it out of "
                f"the global reward"
            )
