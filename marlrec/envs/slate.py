"""`slate`: role agents take turns filling one slate from retrieved candidates (PettingZoo AEC).

Each episode is one user's session, from the history the simulator opens it with
(`Simulator.start_session`; by default the user's training history). A slate starts with
retrieval: the top-M items by the run's retrieval plugin (`retrieval=content`, cosine between
the user's state and the item embeddings, or `retrieval=ease`, EASE item-item weights over the
history), never an item already consumed. A share of the M candidates (`explore_share`) can
instead be exploration items, drawn at random from the unconsumed catalog and from its least
popular half.
The roles then fill the slate's slots in a fixed interleaved order, each choosing a candidate
not yet chosen (action mask). The simulator answers the full slate and the reward plugins score
it: every role receives the cooperative global reward (the weighted sum of the terms) plus
`role_mix` times its own term (`role_terms`). Clicked items join the history, the state is
recomputed, and the next slate begins, until the user leaves or `max_slates` is reached.

`SlateCore` holds the mechanics as tensor operations over many users at once; the AEC env here
is the per-user reference, `slate_parallel` and `single` reuse the core, and `make_vector`
steps many users at once (`marlrec.envs.batched`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from pettingzoo import AECEnv

from marlrec.data import Histories
from marlrec.envs import (
    CandidateScorer,
    EnvContext,
    Environment,
    EnvSpec,
    LoggedChoices,
    ObsLayout,
)
from marlrec.envs.session import session_users, slate_observation_space
from marlrec.registry import PluginError
from marlrec.rewards import SlateOutcome

# Exploration draws this many items per slot to fill at once, plus a margin, before falling
# back to an exact draw: rejections (consumed, retrieved, repeated) are rare in a large catalog.
OVERSAMPLE, DRAW_MARGIN = 2, 8


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
    explore_share: float = 0.0
    """Fraction of the M candidates replaced by exploration items (0 keeps pure retrieval)."""
    explore_long_tail: float = 0.5
    """Share of the exploration items drawn from the least popular half of the catalog; the
    others are drawn uniformly from every unconsumed item."""
    role_terms: dict[str, str] = field(default_factory=dict)
    """Role -> reward name: the term that role receives on top of the global reward."""
    role_mix: float = 0.0
    """lambda: each role's reward is the global reward plus lambda times its own term."""


@dataclass(frozen=True)
class SlateScore:
    """The rewards of one answered slate."""

    terms: dict[str, float]  # every reward term, unweighted
    total: float  # the global reward: the weighted sum of the terms
    role_rewards: np.ndarray  # (n_roles,) total + role_mix * the role's own term


class SlateCore:
    """The environment's mechanics as batched tensor operations over B users at once.

    The AEC env uses it with B = 1; ranking evaluation and the batched env use it for many
    users in one call. Exploration draws use one numpy generator per row, so a row's
    candidates depend only on its own generator whatever the batch.
    """

    def __init__(self, ctx: EnvContext, config: SlateConfig) -> None:
        self.ctx = ctx
        self.roles = list(config.roles)
        self.n_roles = len(config.roles)
        self.slate_size = self.n_roles * config.slots_per_role
        self.n_candidates = config.n_candidates
        self.max_slates = config.max_slates
        self.turn_order = [slot % self.n_roles for slot in range(self.slate_size)]
        self.history_len = config.history_len
        self.layout = ObsLayout(
            ctx.state.dim, config.n_candidates, self.n_roles, config.history_len
        )
        counts = torch.as_tensor(ctx.data.item_popularity, device=ctx.device)
        log_count = torch.log1p(counts)
        self.popularity = log_count / log_count.max().clamp(min=1e-9)
        self.n_explore = round(config.explore_share * config.n_candidates)
        self.n_long_tail = round(self.n_explore * config.explore_long_tail)
        # The least popular half, ties broken by id: the pool of long-tail exploration items.
        by_count = torch.argsort(counts.cpu(), stable=True).to(ctx.device)
        self.long_tail_items = by_count[: max(1, ctx.data.n_items // 2)]
        # After a slate without a click the history is unchanged, so a fixed state model gives
        # the same state and, without exploration draws, the same candidates: envs reuse them
        # rather than score the whole catalog again. A trainable state model changes as the
        # agents learn, so its states are always recomputed.
        trainable = any(p.requires_grad for p in ctx.state.parameters())
        self.reuse_retrieval = self.n_explore == 0 and not trainable
        self.reward_weights = {name: r.weight for name, r in ctx.rewards.items()}
        self.role_terms = [config.role_terms.get(role) for role in self.roles]
        self.role_mix = float(config.role_mix)

    # --- user state and retrieval ---------------------------------------------------------

    def pack(self, histories: list[np.ndarray]) -> Histories:
        return Histories.pack(histories, self.ctx.device)

    @torch.no_grad()
    def states(self, histories: Histories) -> torch.Tensor:
        """The state model over packed histories (B, state dim)."""
        return self.ctx.state.from_histories(histories, self.ctx.item_emb)

    def recent(self, histories: Histories) -> torch.Tensor:
        """Each history's last `history_len` item ids in time order, padded with -1 at the end."""
        return histories.last(self.history_len)[0]

    @torch.no_grad()
    def retrieval_scores(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        """Each item's retrieval score in [-1, 1] for each state, -inf on items consumed."""
        scores = self.ctx.retriever.scores(states, histories)
        scores[histories.rows(), histories.items] = -torch.inf
        return scores

    def candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-M items by retrieval score, best first, and their scores."""
        top = scores.topk(self.n_candidates, dim=-1)
        return top.indices, top.values

    @torch.no_grad()
    def retrieve(
        self, scores: torch.Tensor, rngs: Sequence[np.random.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The M candidates of a slate, best retrieval score first, and their scores.

        Without exploration they are `candidates(scores)`. With it, the top M - E retrieved
        items are joined by E exploration items: long-tail ones (uniform over the least popular
        half of the catalog) and random ones (uniform over the whole catalog), never an item
        consumed, retrieved or drawn already. Row b draws from `rngs[b]`. Exploration items keep
        their real cosine score. When too few eligible items remain for a row, the best
        retrieved items not yet taken fill in.
        """
        if self.n_explore == 0:
            return self.candidates(scores)
        taken = scores.topk(self.n_candidates - self.n_explore, dim=-1).indices
        tail = self._draw_distinct(scores, taken, self.long_tail_items, self.n_long_tail, rngs)
        taken = torch.cat([taken, tail], dim=1)
        n_uniform = self.n_explore - self.n_long_tail
        uniform = self._draw_distinct(scores, taken, None, n_uniform, rngs)
        candidates = torch.cat([taken, uniform], dim=1)
        cand_scores = scores.gather(1, candidates)
        order = cand_scores.argsort(dim=1, descending=True, stable=True)
        return candidates.gather(1, order), cand_scores.gather(1, order)

    def _draw_distinct(
        self,
        scores: torch.Tensor,
        taken: torch.Tensor,
        pool: torch.Tensor | None,
        n: int,
        rngs: Sequence[np.random.Generator],
    ) -> torch.Tensor:
        """n distinct unconsumed items per row from `pool` (None: every item), not in `taken`.

        One oversampled draw per row, checked for every row at once; a row left short (rare)
        draws again exactly among its eligible items.
        """
        batch, device = scores.shape[0], scores.device
        if n == 0:
            return torch.empty(batch, 0, dtype=torch.long, device=device)
        pool_size = len(pool) if pool is not None else scores.shape[1]
        size = OVERSAMPLE * n + DRAW_MARGIN
        draws = torch.as_tensor(
            np.stack([rng.integers(pool_size, size=size) for rng in rngs]), device=device
        )
        items = pool[draws] if pool is not None else draws
        eligible = torch.isfinite(scores.gather(1, items))
        eligible &= ~(items[:, :, None] == taken[:, None, :]).any(-1)
        repeated = (items[:, :, None] == items[:, None, :]).tril(diagonal=-1).any(-1)
        eligible &= ~repeated
        position = eligible.long().cumsum(1) - 1
        keep = eligible & (position < n)
        drawn = torch.full((batch, n), -1, dtype=torch.long, device=device)
        rows, cols = torch.nonzero(keep, as_tuple=True)
        drawn[rows, position[rows, cols]] = items[rows, cols]
        for row in torch.nonzero(keep.sum(1) < n).flatten().tolist():
            drawn[row] = self._draw_exactly(scores[row], taken[row], drawn[row], pool, rngs[row])
        return drawn

    def _draw_exactly(
        self,
        scores: torch.Tensor,
        taken: torch.Tensor,
        drawn: torch.Tensor,
        pool: torch.Tensor | None,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """Complete one row's draw (-1 marks a free slot) over its whole eligible set."""
        used = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        used[taken] = True
        used[drawn[drawn >= 0]] = True
        allowed = torch.isfinite(scores) & ~used
        if pool is not None:
            in_pool = torch.zeros_like(allowed)
            in_pool[pool] = True
            allowed &= in_pool
        eligible = torch.nonzero(allowed).flatten().cpu().numpy()
        free = int((drawn < 0).sum())
        picked = rng.choice(eligible, size=min(free, len(eligible)), replace=False)
        used[torch.as_tensor(picked, dtype=torch.long, device=scores.device)] = True
        # Too few eligible items left: the best retrieved items not yet taken fill in
        # (consumed ones last: their -inf score masks them).
        rank_key = torch.nan_to_num(scores, neginf=-2.0).masked_fill(used, -torch.inf)
        filler = rank_key.topk(free - len(picked)).indices
        fill = torch.cat([torch.as_tensor(picked, dtype=torch.long, device=scores.device), filler])
        completed = drawn.clone()
        completed[drawn < 0] = fill
        return completed

    def start_session(self, user: int, rng: np.random.Generator) -> np.ndarray:
        """Open `user`'s session with the simulator; the history the session starts from (the
        simulator's choice, by default the user's whole training history)."""
        history = self.ctx.simulator.start_session(user, rng)
        if history is None:
            history = self.ctx.data.train_histories[user]
        return np.asarray(history, dtype=np.int64)

    # --- observations ---------------------------------------------------------------------

    def observe(
        self,
        states: torch.Tensor,
        recent: torch.Tensor,
        candidates: torch.Tensor,
        cand_scores: torch.Tensor,
        chosen: torch.Tensor,
        role: int | torch.Tensor,
        slot: int | torch.Tensor,
        slate_number: int | torch.Tensor,
    ) -> torch.Tensor:
        """Flat observations (B, layout.size); role, slot and slate number are scalars or (B,)."""
        batch, device = states.shape[0], states.device

        def per_row(value: int | torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(value, dtype=torch.long, device=device).expand(batch)

        role_onehot = F.one_hot(per_row(role), self.n_roles).float()
        # In float64 first, so that every batch size rounds progress the same way.
        progress = torch.stack(
            [
                per_row(slot).double() / self.slate_size,
                per_row(slate_number).double() / self.max_slates,
            ],
            dim=-1,
        ).float()
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

    # --- answering a slate ----------------------------------------------------------------

    def answer(
        self, user: int, items: np.ndarray, step: int, rng: np.random.Generator
    ) -> tuple[SlateOutcome, SlateScore]:
        """The simulator's answer to a full slate (item ids in slot order) and its rewards."""
        response = self.ctx.simulator.respond(user, items, rng)
        outcome = SlateOutcome(
            user=user,
            items=items,
            roles=np.asarray(self.turn_order),
            clicks=np.asarray(response.clicks, dtype=bool),
            step=step,
            leave=response.leave,
            ratings=response.ratings,
        )
        return outcome, self.score(outcome)

    def score(self, outcome: SlateOutcome) -> SlateScore:
        """Every reward term, the global weighted sum, and each role's mixed reward."""
        terms = {name: float(r.score(outcome)) for name, r in self.ctx.rewards.items()}
        total = float(sum(self.reward_weights[name] * value for name, value in terms.items()))
        own = np.array([terms[t] if t is not None else 0.0 for t in self.role_terms])
        return SlateScore(terms, total, total + self.role_mix * own)

    def slate_info(self, outcome: SlateOutcome, score: SlateScore) -> dict[str, Any]:
        """What every agent's info carries after a slate: each term logged on its own."""
        return {
            "reward_terms": dict(score.terms),
            "reward_global": score.total,
            "role_rewards": dict(zip(self.roles, score.role_rewards.tolist(), strict=True)),
            "clicks": int(outcome.clicks.sum()),
            "user": outcome.user,
        }


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
            scores = self.core.retrieval_scores(self._state, history)
            self._candidates, self._cand_scores = self.core.retrieve(scores, [self.rng])
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
        self._users = session_users(core)
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
            self._start_slate(retrieve=outcome.clicks.any() or not self.core.reuse_retrieval)


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
        return EnvSpec(tuple(self.roles), self.core.layout, self.ctx.item_emb, self.ctx.state)

    def make(self) -> Any:
        return SlateAEC(self.core, self.roles)

    def make_vector(self, num_envs: int, *, stacked: bool = True) -> Any:
        """`num_envs` sessions stepped together as tensors: what
        `DummyVectorEnv([PettingZooEnv(env.make())] * num_envs)` plays, much faster; observations
        come stacked in one Batch unless `stacked=False` (see `marlrec.envs.batched`)."""
        from marlrec.envs.batched import BatchedSlateEnv

        return BatchedSlateEnv(self.core, self.roles, num_envs, stacked=stacked)

    @torch.no_grad()
    def logged_choices(
        self, histories: list[np.ndarray], targets: np.ndarray, rng: np.random.Generator
    ) -> LoggedChoices:
        """Each history's next logged item among its retrieved candidates, at a random turn.

        The turn (slot and slate number) is drawn uniformly, and the slots before it hold
        other candidates, so the observations cover every role and every stage of a slate.
        Histories whose logged item is not retrieved are left out: inserting it would tell the
        network which candidate is the answer.
        """
        core = self.core
        packed = core.pack(histories)
        states = core.states(packed)
        cand, cand_scores = core.candidates(core.retrieval_scores(states, packed))
        found = cand == torch.as_tensor(targets, device=cand.device)[:, None]
        keep = found.any(dim=1)
        cand, cand_scores, found = cand[keep], cand_scores[keep], found[keep]
        rows = keep.nonzero().squeeze(1).cpu()
        n, device = len(rows), cand.device
        slot = torch.as_tensor(rng.integers(0, core.slate_size, n), device=device)
        slate_number = torch.as_tensor(rng.integers(0, core.max_slates, n), device=device)
        # Fill the earlier slots with random candidates other than the logged item.
        noise = torch.as_tensor(rng.random(cand.shape), device=device).masked_fill(found, 2.0)
        chosen = noise.argsort(dim=1).argsort(dim=1) < slot[:, None]
        chosen &= torch.isfinite(cand_scores)
        role = torch.as_tensor(core.turn_order, device=device)[slot]
        recent = core.recent(packed)[keep]
        obs = core.observe(
            states[keep], recent, cand, cand_scores, chosen, role, slot, slate_number
        )
        return LoggedChoices(rows=rows, obs=obs, roles=role, actions=found.float().argmax(dim=1))

    @torch.no_grad()
    def rank(
        self, scorer: CandidateScorer, users: np.ndarray, histories: list[np.ndarray], k: int
    ) -> torch.Tensor:
        core = self.core
        packed = core.pack(histories)
        states = core.states(packed)
        recent = core.recent(packed)
        scores = core.retrieval_scores(states, packed)
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
