"""The per-user reference env: role agents take turns filling one slate (PettingZoo AEC).

Each episode is one user's session (`SlateSession`). A slate starts with the core's retrieval
(`marlrec.envs.core`); the roles then fill the slate's slots in a fixed interleaved order, each
choosing a candidate not yet chosen (action mask). The simulator answers the full slate and
every role receives its mixed reward. Clicked items join the history, the state is recomputed,
and the next slate begins, until the user leaves or `max_slates` is reached.

`SlateAEC` is the implementation checked by PettingZoo's api_test and the one the batched env
(`marlrec.envs.batched`) must agree with on the same seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import AECEnv

from marlrec.envs import EnvContext
from marlrec.envs.core import SlateCore
from marlrec.envs.session import session_users, slate_observation_space


class SlateSession:
    """One user's session as both env forms keep it: the user, the history, the open slate."""

    core: SlateCore
    ctx: EnvContext
    rng: np.random.Generator
    _users: np.ndarray

    def _open_session(self, seed: int | None, options: dict[str, Any] | None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        options = options or {}
        self.user = int(options["user"]) if "user" in options else int(self.rng.choice(self._users))
        self.history = self.core.start_session(self.user, self.rng).tolist()
        self.slate_number = 0

    def _retrieve(self, retrieve: bool) -> None:
        """Open a slate; `retrieve=False` keeps the last state and candidates."""
        if retrieve:
            history = self.core.pack([np.asarray(self.history, dtype=np.int64)])
            self._state = self.core.states(history)
            self._recent = self.core.recent(history)
            self._candidates, self._cand_scores = self.core.slate_candidates(
                self._state, history, [self.rng]
            )
            self._features = self.core.candidate_features(self._state, history, self._candidates)
        self._chosen = torch.zeros_like(self._candidates, dtype=torch.bool)
        self._slate: list[int] = []

    def render(self) -> str | None:
        if getattr(self, "render_mode", None) != "ansi":
            return None
        titles = [self.ctx.data.item_text[i][:60] for i in self._slate]
        return f"user {self.user}, slate {self.slate_number}: " + " | ".join(titles)

    def close(self) -> None:
        pass


class SlateAEC(SlateSession, AECEnv):
    """One user's session; the reference implementation checked by PettingZoo's api_test."""

    metadata = {"name": "marlrec_slate_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def __init__(self, core: SlateCore, roles: list[str], render_mode: str | None = None) -> None:
        super().__init__()
        self.core = core
        self.ctx = core.ctx
        self.possible_agents = list(roles)
        self.render_mode = render_mode
        obs_space = slate_observation_space(core)
        self.observation_spaces = {a: obs_space for a in roles}
        self.action_spaces = {a: spaces.Discrete(core.n_candidates) for a in roles}
        self._users = session_users(core.ctx.data)
        self.rng = np.random.default_rng()

    def observation_space(self, agent: str) -> spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        self._open_session(seed, options)
        self.agents = self.possible_agents[:]
        self.rewards = dict.fromkeys(self.agents, 0.0)
        self._cumulative_rewards = dict.fromkeys(self.agents, 0.0)
        self.terminations = dict.fromkeys(self.agents, False)
        self.truncations = dict.fromkeys(self.agents, False)
        self.infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        self._start_slate()

    def _start_slate(self, retrieve: bool = True) -> None:
        self._retrieve(retrieve)
        self.agent_selection = self.possible_agents[self.core.turn_order[0]]

    def observe(self, agent: str) -> dict[str, np.ndarray]:
        role = self.possible_agents.index(agent)
        obs = self.core.observe(
            self._state,
            self._recent,
            self._candidates,
            self._cand_scores,
            self._chosen,
            role,
            len(self._slate),
            self.slate_number,
            self._features,
        )
        mask = self.core.action_mask(self._cand_scores, self._chosen)
        return {
            "observation": obs[0].cpu().numpy(),
            "action_mask": mask[0].cpu().numpy().astype(np.int8),
        }

    def step(self, action: int | None) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        mask = self.core.action_mask(self._cand_scores, self._chosen)[0]
        if action is None or not 0 <= int(action) < len(mask) or not bool(mask[int(action)]):
            raise ValueError(f"{agent}: action {action} is not an available candidate")
        self._cumulative_rewards[agent] = 0.0
        self._clear_rewards()
        self._chosen[0, int(action)] = True
        self._slate.append(int(self._candidates[0, int(action)]))
        if len(self._slate) == self.core.slate_size:
            self._answer_slate()
        else:
            self.agent_selection = self.possible_agents[self.core.turn_order[len(self._slate)]]
        self._accumulate_rewards()

    def _answer_slate(self) -> None:
        items = np.asarray(self._slate, dtype=np.int64)
        outcome, score = self.core.answer(self.user, items, self.slate_number, self.rng)
        info = self.core.slate_info(outcome, score)
        for role, agent in enumerate(self.possible_agents):
            self.rewards[agent] = float(score.role_rewards[role])
            self.infos[agent] = dict(info)
        self.history.extend(items[outcome.clicks].tolist())
        self.slate_number += 1
        if outcome.leave or self.slate_number >= self.core.max_slates:
            self.terminations = dict.fromkeys(self.agents, True)
            self.agent_selection = self.possible_agents[self.core.turn_order[0]]
        else:
            self._start_slate(retrieve=bool(outcome.clicks.any()) or not self.core.reuse_retrieval)
