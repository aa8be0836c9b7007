"""The slate environment's core: user state, retrieval and candidates, observations, outcome.

Each episode is one user's session, from the history the simulator opens it with
(`Simulator.start_session`; by default the user's training history). A slate starts with
retrieval: the top-M items by the run's retrieval plugin (`retrieval=content`, cosine between
the user's state and the item embeddings, or `retrieval=ease`, EASE item-item weights over the
history), never an item already consumed. A share of the M candidates (`explore_share`) can
instead be exploration items (`marlrec.envs.exploration`).
The simulator answers a full slate and the reward plugins score it: every role receives the
cooperative global reward (the weighted sum of the terms) plus `role_mix` times its own term
(`role_terms`).

`SlateCore` holds these mechanics as tensor operations over many users at once: the per-user
AEC env (`marlrec.envs.aec`) uses it with one user, `slate_parallel` and `single` reuse it,
ranking evaluation and imitation data (`marlrec.envs.logged`) use it for many users in one
call, and the batched env (`marlrec.envs.batched`) steps many sessions with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from marlrec.data import Histories
from marlrec.envs import EnvContext, ObsLayout
from marlrec.envs.exploration import draw_distinct
from marlrec.registry import PluginError
from marlrec.rewards import SlateOutcome

CANDIDATE_FEATURES = ("score", "popularity")


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
    candidate_features: list[str] = field(default_factory=lambda: ["score", "popularity"])
    """The candidates' scalar features the agents see (`score`, `popularity`); one left out
    reads as zero. Popularity is zero for every item without training interactions, so
    agents that learned from logs of consumed items never rank such (cold) items with it."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.candidate_features) - set(CANDIDATE_FEATURES))
        if unknown:
            raise PluginError(
                f"env.candidate_features: unknown feature '{unknown[0]}'; "
                f"known: {', '.join(CANDIDATE_FEATURES)}"
            )


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
            ctx.state.dim,
            config.n_candidates,
            self.n_roles,
            config.history_len,
            ctx.retriever.n_features,
        )
        counts = torch.as_tensor(ctx.data.item_popularity, device=ctx.device)
        log_count = torch.log1p(counts)
        self.popularity = log_count / log_count.max().clamp(min=1e-9)
        if "popularity" not in config.candidate_features:
            self.popularity = torch.zeros_like(self.popularity)
        self.use_scores = "score" in config.candidate_features
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

    @torch.no_grad()
    def slate_candidates(
        self, states: torch.Tensor, histories: Histories, rngs: Sequence[np.random.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A new slate's M candidates and their scores: the retriever's own top-M search
        (which an approximate index answers without scoring the catalog), or with exploration,
        `retrieve` over every item's score."""
        if self.n_explore == 0:
            return self.ctx.retriever.top(states, histories, self.n_candidates)
        return self.retrieve(self.retrieval_scores(states, histories), rngs)

    @torch.no_grad()
    def candidate_features(
        self, states: torch.Tensor, histories: Histories, candidates: torch.Tensor
    ) -> torch.Tensor:
        """(B, M, layout.n_features) the retriever's features of each row's candidates."""
        return self.ctx.retriever.candidate_features(states, histories, candidates)

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
        tail = draw_distinct(scores, taken, self.long_tail_items, self.n_long_tail, rngs)
        taken = torch.cat([taken, tail], dim=1)
        n_uniform = self.n_explore - self.n_long_tail
        uniform = draw_distinct(scores, taken, None, n_uniform, rngs)
        candidates = torch.cat([taken, uniform], dim=1)
        cand_scores = scores.gather(1, candidates)
        order = cand_scores.argsort(dim=1, descending=True, stable=True)
        return candidates.gather(1, order), cand_scores.gather(1, order)

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
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flat observations (B, layout.size); role, slot and slate number are scalars or (B,);
        `features` (B, M, layout.n_features) from `candidate_features`, None when it is 0."""
        batch, device = states.shape[0], states.device
        if features is None:
            assert self.layout.n_features == 0, "the retriever's candidate features are missing"
            features = candidates.new_zeros(*candidates.shape, 0, dtype=torch.float32)

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
        if not self.use_scores:
            finite_scores = torch.zeros_like(finite_scores)
        parts = [
            states,
            recent.float(),
            candidates.float(),
            finite_scores,
            self.popularity[candidates],
            chosen.float(),
            role_onehot,
            progress,
            features.flatten(1).float(),
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
        """What every agent's info carries after a slate: each term logged on its own, and
        the slate itself (items, the role that filled each slot, which slots were clicked)."""
        return {
            "reward_terms": dict(score.terms),
            "reward_global": score.total,
            "role_rewards": dict(zip(self.roles, score.role_rewards.tolist(), strict=True)),
            "clicks": int(outcome.clicks.sum()),
            "user": outcome.user,
            "slate": outcome.items,
            "slot_roles": outcome.roles,
            "slot_clicks": outcome.clicks,
        }
