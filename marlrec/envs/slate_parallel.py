"""`slate_parallel`: the roles propose candidates simultaneously (a PettingZoo ParallelEnv).

The mechanics are the `slate` environment's (retrieval, exploration, simulator, rewards, role
mixing, sessions); only the turn structure differs. A slate takes `slots_per_role` parallel
steps. At each step every role picks one candidate (Discrete(M)) seeing the same slate so far
and the same action mask, so all agents have identical spaces. The picks fill the step's slots
in role order, which is the `slate` env's interleaved slot order.

Conflicts are resolved deterministically: roles are served in role order, so when two roles
pick the same candidate the earlier role keeps it, and the later one takes the available
candidate with the best retrieval score that no role has taken (if every available one is
taken, the best-scored one not yet in the slate). `info["conflicts"]` counts the conflicts
resolved in the slate.

`make()` gives the AEC form Tianshou needs (`parallel_to_aec`), `make_parallel()` the
ParallelEnv.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec

from marlrec.envs.aec import SlateSession
from marlrec.envs.core import SlateCore
from marlrec.envs.session import session_users, slate_observation_space
from marlrec.envs.slate import SlateEnvironment


class SlateParallel(SlateSession, ParallelEnv):
    """One user's session with the roles acting simultaneously; checked by parallel_api_test."""

    metadata = {
        "name": "marlrec_slate_parallel_v0",
        "render_modes": ["ansi"],
        "is_parallelizable": True,
    }

    def __init__(self, core: SlateCore, roles: list[str], render_mode: str | None = None) -> None:
        self.core = core
        self.ctx = core.ctx
        self.possible_agents = list(roles)
        self.agents: list[str] = []
        self.render_mode = render_mode
        self._observation_space = slate_observation_space(core)
        self._action_space = spaces.Discrete(core.n_candidates)
        self._users = session_users(core.ctx.data)
        self.rng = np.random.default_rng()

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_space

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]]]:
        self._open_session(seed, options)
        self.agents = self.possible_agents[:]
        self._start_slate()
        return self._observe_all(), {a: {} for a in self.agents}

    def _start_slate(self, retrieve: bool = True) -> None:
        self._retrieve(retrieve)
        self._conflicts = 0

    def step(self, actions: dict[str, int]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise ValueError("the session has ended: reset the env first")
        mask = self._mask()
        for agent in self.agents:
            action = actions.get(agent)
            if action is None or not 0 <= int(action) < len(mask) or not mask[int(action)]:
                raise ValueError(f"{agent}: action {action} is not an available candidate")
        available = torch.as_tensor(mask, dtype=torch.bool, device=self._chosen.device)
        self._fill([int(actions[a]) for a in self.possible_agents], available)
        rewards = dict.fromkeys(self.agents, 0.0)
        infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        ended = False
        if len(self._slate) == self.core.slate_size:
            ended = self._answer_slate(rewards, infos)
        observations = self._observe_all()
        terminations = dict.fromkeys(self.agents, ended)
        truncations = dict.fromkeys(self.agents, False)
        if ended:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def _fill(self, picks: list[int], available: torch.Tensor) -> None:
        """Serve the roles' picks in role order; a pick already taken this step is replaced
        by the best-scored candidate still free."""
        chosen = self._chosen[0]
        scores = torch.nan_to_num(self._cand_scores[0], neginf=-2.0)
        for pick in picks:
            if chosen[pick]:
                self._conflicts += 1
                free = available & ~chosen
                pool = free if bool(free.any()) else ~chosen
                pick = int(scores.masked_fill(~pool, -torch.inf).argmax())
            chosen[pick] = True
            self._slate.append(int(self._candidates[0, pick]))

    def _answer_slate(self, rewards: dict[str, float], infos: dict[str, dict[str, Any]]) -> bool:
        """Score the full slate into `rewards` and `infos`; whether the session ended."""
        items = np.asarray(self._slate, dtype=np.int64)
        outcome, score = self.core.answer(self.user, items, self.slate_number, self.rng)
        info = {**self.core.slate_info(outcome, score), "conflicts": self._conflicts}
        for role, agent in enumerate(self.possible_agents):
            rewards[agent] = float(score.role_rewards[role])
            infos[agent] = dict(info)
        self.history.extend(items[outcome.clicks].tolist())
        self.slate_number += 1
        if outcome.leave or self.slate_number >= self.core.max_slates:
            return True
        self._start_slate(retrieve=outcome.clicks.any() or not self.core.reuse_retrieval)
        return False

    def _mask(self) -> np.ndarray:
        return self.core.action_mask(self._cand_scores, self._chosen)[0].cpu().numpy()

    def _observe_all(self) -> dict[str, dict[str, np.ndarray]]:
        """Each role sees the slate so far and the slot its pick will fill."""
        mask = self._mask().astype(np.int8)
        observations = {}
        for role, agent in enumerate(self.possible_agents):
            obs = self.core.observe(
                self._state,
                self._recent,
                self._candidates,
                self._cand_scores,
                self._chosen,
                role,
                min(len(self._slate) + role, self.core.slate_size),
                self.slate_number,
                self._features,
            )
            observations[agent] = {"observation": obs[0].cpu().numpy(), "action_mask": mask}
        return observations


class SlateParallelEnvironment(SlateEnvironment):
    """The `slate` config; `make()` is the AEC form for Tianshou, `make_parallel()` the
    ParallelEnv."""

    def make_parallel(self) -> SlateParallel:
        return SlateParallel(self.core, self.roles)

    def make(self) -> AECEnv:
        return parallel_to_aec(self.make_parallel())

    def make_vector(self, num_envs: int) -> Any:
        # The batched form is the turn-based `slate` env's; conflicts make this one differ.
        return super(SlateEnvironment, self).make_vector(num_envs)
