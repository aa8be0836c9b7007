"""`slate`: role agents take turns filling one slate from retrieved candidates (PettingZoo AEC).

Each episode is one user's session. A slate starts with retrieval: the top-M items by cosine
similarity between the user's state and the item embeddings, never an item already consumed.
The roles then fill the slate's slots in a fixed interleaved order, each choosing a candidate not
yet chosen (action mask). The simulator answers the full slate, the reward plugins score it, and
every role receives the cooperative global reward. Clicked items join the history, the state is
recomputed, and the next slate begins, until the user leaves or `max_slates` is reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from pettingzoo import AECEnv

from marlrec.data import fill_histories
from marlrec.envs import CandidateScorer, EnvContext, Environment, EnvSpec, ObsLayout
from marlrec.registry import PluginError
from marlrec.rewards import SlateOutcome


@dataclass(kw_only=True)
class SlateConfig:
    roles: list[str] = field(default_factory=lambda: ["relevance", "diversity"])
    """The cooperating agents, one per role, in turn order."""
    slots_per_role: int = 2
    """Slots each role fills per slate; the slate holds len(roles) * slots_per_role items."""
    n_candidates: int = 20
    """M, the number of retrieved candidates the roles choose from."""
    max_slates: int = 5
    """Slates per session before it ends, if the user has not left earlier."""
    history_len: int = 50
    """Most recent history items in each observation, read by trainable state models."""


class SlateCore:
    """The environment's mechanics as batched tensor operations over B users at once.

    The AEC env uses it with B = 1; ranking evaluation uses it for many users in one call.
    """

    def __init__(self, ctx: EnvContext, config: SlateConfig) -> None:
        self.ctx = ctx
        self.item_unit = F.normalize(ctx.item_emb, dim=-1)
        self.n_roles = len(config.roles)
        self.slate_size = self.n_roles * config.slots_per_role
        self.n_candidates = config.n_candidates
        self.max_slates = config.max_slates
        self.turn_order = [slot % self.n_roles for slot in range(self.slate_size)]
        self.history_len = config.history_len
        self.layout = ObsLayout(
            ctx.state.dim, config.n_candidates, self.n_roles, config.history_len
        )
        log_count = torch.log1p(torch.as_tensor(ctx.data.item_popularity, device=ctx.device))
        self.popularity = log_count / log_count.max().clamp(min=1e-9)

    @torch.no_grad()
    def states(self, histories: list[np.ndarray]) -> torch.Tensor:
        lengths = torch.tensor([len(h) for h in histories], device=self.ctx.device)
        padded = torch.zeros(len(histories), max(1, int(lengths.max())), dtype=torch.long)
        for b, h in enumerate(histories):
            padded[b, : len(h)] = torch.as_tensor(h, dtype=torch.long)
        emb = self.ctx.item_emb[padded.to(self.ctx.device)]
        return self.ctx.state(emb, lengths)

    def recent(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Each history's last `history_len` item ids in time order, padded with -1 at the end."""
        ids = torch.full((len(histories), self.history_len), -1, dtype=torch.long)
        for b, h in enumerate(histories):
            tail = h[len(h) - self.history_len :] if self.history_len else h[:0]
            ids[b, : len(tail)] = torch.as_tensor(tail, dtype=torch.long)
        return ids.to(self.ctx.device)

    @torch.no_grad()
    def retrieval_scores(self, states: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        """Cosine similarity of each state to every item, -inf on items already consumed."""
        scores = F.normalize(states, dim=-1) @ self.item_unit.T
        return fill_histories(scores, histories, -torch.inf)

    def candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = scores.topk(self.n_candidates, dim=-1)
        return top.indices, top.values

    def observe(
        self,
        states: torch.Tensor,
        recent: torch.Tensor,
        candidates: torch.Tensor,
        cand_scores: torch.Tensor,
        chosen: torch.Tensor,
        role: int,
        slot: int,
        slate_number: int,
    ) -> torch.Tensor:
        batch = states.shape[0]
        role_onehot = torch.zeros(batch, self.n_roles, device=states.device)
        role_onehot[:, role] = 1.0
        progress = torch.tensor(
            [slot / self.slate_size, slate_number / self.max_slates], device=states.device
        ).expand(batch, 2)
        finite_scores = torch.nan_to_num(cand_scores, neginf=-1.0)
        parts = [
            states,
            recent.float(),
            candidates.float(),
            finite_scores,
            self.popularity[candidates],
            chosen.float(),
            role_onehot,
            progress,
        ]
        return torch.cat(parts, dim=-1).float()

    def action_mask(self, cand_scores: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        return ~chosen & torch.isfinite(cand_scores)


class SlateAEC(AECEnv):
    """One user's session; the reference implementation checked by PettingZoo's api_test."""

    metadata = {"name": "marlrec_slate_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def __init__(self, core: SlateCore, roles: list[str], render_mode: str | None = None) -> None:
        super().__init__()
        self.core = core
        self.ctx = core.ctx
        self.possible_agents = list(roles)
        self.render_mode = render_mode
        size, m = core.layout.size, core.n_candidates
        obs_space = spaces.Dict(
            {
                "observation": spaces.Box(-np.inf, np.inf, (size,), np.float32),
                "action_mask": spaces.Box(0, 1, (m,), np.int8),
            }
        )
        self.observation_spaces = {a: obs_space for a in roles}
        self.action_spaces = {a: spaces.Discrete(m) for a in roles}
        self._users = np.flatnonzero([len(h) > 0 for h in self.ctx.data.train_histories])
        self._rng = np.random.default_rng()

    def observation_space(self, agent: str) -> spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        options = options or {}
        self.user = (
            int(options["user"]) if "user" in options else int(self._rng.choice(self._users))
        )
        self.history = list(self.ctx.data.train_histories[self.user])
        self.agents = self.possible_agents[:]
        self.rewards = dict.fromkeys(self.agents, 0.0)
        self._cumulative_rewards = dict.fromkeys(self.agents, 0.0)
        self.terminations = dict.fromkeys(self.agents, False)
        self.truncations = dict.fromkeys(self.agents, False)
        self.infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        self.slate_number = 0
        self._start_slate()

    def _start_slate(self) -> None:
        history = np.asarray(self.history, dtype=np.int64)
        self._state = self.core.states([history])
        self._recent = self.core.recent([history])
        scores = self.core.retrieval_scores(self._state, [history])
        self._candidates, self._cand_scores = self.core.candidates(scores)
        self._chosen = torch.zeros_like(self._candidates, dtype=torch.bool)
        self._slate: list[int] = []
        self._slot_roles: list[int] = []
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
        self._slot_roles.append(self.possible_agents.index(agent))
        if len(self._slate) == self.core.slate_size:
            self._answer_slate()
        else:
            self.agent_selection = self.possible_agents[self.core.turn_order[len(self._slate)]]
        self._accumulate_rewards()

    def _answer_slate(self) -> None:
        items = np.asarray(self._slate, dtype=np.int64)
        response = self.ctx.simulator.respond(self.user, items, self._rng)
        outcome = SlateOutcome(
            user=self.user,
            items=items,
            roles=np.asarray(self._slot_roles),
            clicks=np.asarray(response.clicks, dtype=bool),
            step=self.slate_number,
            leave=response.leave,
            ratings=response.ratings,
        )
        terms = {name: reward.score(outcome) for name, reward in self.ctx.rewards.items()}
        total = sum(self.ctx.rewards[name].weight * value for name, value in terms.items())
        info = {"reward_terms": terms, "clicks": int(outcome.clicks.sum()), "user": self.user}
        for a in self.agents:
            self.rewards[a] = float(total)
            self.infos[a] = dict(info)
        self.history.extend(items[outcome.clicks].tolist())
        self.slate_number += 1
        if response.leave or self.slate_number >= self.core.max_slates:
            self.terminations = dict.fromkeys(self.agents, True)
            self.agent_selection = self.possible_agents[self.core.turn_order[0]]
        else:
            self._start_slate()

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        titles = [self.ctx.data.item_text[i][:60] for i in self._slate]
        return f"user {self.user}, slate {self.slate_number}: " + " | ".join(titles)

    def close(self) -> None:
        pass


class SlateEnvironment(Environment):
    Config = SlateConfig

    def __init__(self, config: SlateConfig, *, ctx: EnvContext) -> None:
        super().__init__(config, ctx=ctx)
        _validate(config, ctx)
        self.core = SlateCore(ctx, config)

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            tuple(self.config.roles), self.core.layout, self.ctx.item_emb, self.ctx.state
        )

    def make(self) -> SlateAEC:
        return SlateAEC(self.core, self.config.roles)

    @torch.no_grad()
    def rank(
        self, scorer: CandidateScorer, users: np.ndarray, histories: list[np.ndarray], k: int
    ) -> torch.Tensor:
        core = self.core
        states = core.states(histories)
        recent = core.recent(histories)
        scores = core.retrieval_scores(states, histories)
        cand, cand_scores = core.candidates(scores)
        chosen = torch.zeros_like(cand, dtype=torch.bool)
        rows = torch.arange(len(users), device=cand.device)
        # Rank keys: slate slots above remaining candidates above the rest (retrieval in [-1, 1]).
        key = scores.clone()
        for slot, role in enumerate(core.turn_order):
            obs = core.observe(states, recent, cand, cand_scores, chosen, role, slot, 0)
            q = scorer(obs, role).masked_fill(~core.action_mask(cand_scores, chosen), -torch.inf)
            pick = q.argmax(dim=-1)
            chosen[rows, pick] = True
            key[rows, cand[rows, pick]] = 1e4 - slot
        obs = core.observe(states, recent, cand, cand_scores, chosen, 0, core.slate_size, 0)
        q = scorer(obs, 0).masked_fill(~core.action_mask(cand_scores, chosen), -torch.inf)
        order = q.argsort(dim=-1, descending=True).argsort(dim=-1).float()
        rest = core.action_mask(cand_scores, chosen)
        key[rows[:, None].expand_as(cand)[rest], cand[rest]] = 1e3 - order[rest]
        return key.topk(k, dim=-1).indices


def _validate(config: SlateConfig, ctx: EnvContext) -> None:
    if len(config.roles) < 1 or len(set(config.roles)) != len(config.roles):
        raise PluginError(f"env.roles must be distinct role names, got {config.roles}")
    if config.slots_per_role < 1 or config.max_slates < 1:
        raise PluginError("env.slots_per_role and env.max_slates must be at least 1")
    slate_size = len(config.roles) * config.slots_per_role
    if not slate_size <= config.n_candidates < ctx.data.n_items:
        raise PluginError(
            f"env.n_candidates={config.n_candidates} must be at least the slate size "
            f"({slate_size}) and below the catalog size ({ctx.data.n_items})"
        )
