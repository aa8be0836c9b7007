"""Rankers: what evaluation and serving ask of a policy, the catalog ranked for each user.

A `Ranker` maps users and what each had consumed to their top-k item ids, history excluded.
Baselines rank by their own scores (`ScoreRanker`); an agent ranks through the slate
environment's mechanics (`AgentRanker`): the slate it would build first, then the other
candidates by its scores, then every other item by retrieval score. Environments themselves
no longer rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch

from marlrec.data import fill_histories
from marlrec.envs import CandidateScorer, Environment
from marlrec.envs.core import SlateCore
from marlrec.evaluation.ranking import top_k
from marlrec.registry import PluginError

if TYPE_CHECKING:
    from marlrec.agents import Agent
    from marlrec.baselines import Baseline

# Scores every item for users given their histories: (len(users), n_items), higher is better.
ScoreFunction = Callable[[np.ndarray, list[np.ndarray]], torch.Tensor]
# Keys above any retrieval score (those lie in [-1, 1]): the slate, then the other candidates.
SLATE_KEY, CANDIDATE_KEY = 1e4, 1e3


class Ranker(Protocol):
    """Ranks the catalog for a chunk of users."""

    def __call__(self, users: np.ndarray, histories: list[np.ndarray], k: int) -> torch.Tensor:
        """Top-k item ids (len(users), k), best first, never an item of the user's history."""
        ...


@runtime_checkable
class ScoringRanker(Ranker, Protocol):
    """A ranker that also gives its scores over the whole catalog (the sampled protocol ranks
    targets and negatives by them)."""

    def scores(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        """Float scores (len(users), n_items), higher is better, history not yet masked."""
        ...


class ScoreRanker:
    """Ranks by a score function, each user's history masked, ties by lower item id.

    The score function returns a new tensor on every call (as `Baseline.scores` does): the
    history is masked in it, in place. A non-contiguous view (a row expanded to every user) is
    copied first; a contiguous one would be written over.
    """

    def __init__(self, score: ScoreFunction) -> None:
        self.score = score

    def scores(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        scores = self.score(users, histories)
        return scores if scores.is_floating_point() else scores.float()

    def __call__(self, users: np.ndarray, histories: list[np.ndarray], k: int) -> torch.Tensor:
        scores = self.scores(users, histories)
        # A non-contiguous result (e.g. a row expanded to every user) is copied first.
        if not scores.is_contiguous():
            scores = scores.clone(memory_format=torch.contiguous_format)
        return top_k(fill_histories(scores, histories, -torch.inf), k)


@dataclass
class AgentRanking:
    """An agent's rank keys (B, n_items) and, when explained, for every item the scoring that
    placed it: `scorer` the role (n_roles: ordered after the slate by the first role's scores;
    -1: by retrieval), `value` its score there, `rank` its 1-based rank among the items that
    scoring could still choose, and `retrieval` the retrieval scores (-inf on the history)."""

    key: torch.Tensor
    retrieval: torch.Tensor | None = None
    scorer: torch.Tensor = field(init=False)
    value: torch.Tensor = field(init=False)
    rank: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.retrieval is not None:
            self.scorer = torch.full_like(self.key, -1, dtype=torch.long)
            self.value = self.retrieval.clone()
            self.rank = torch.zeros_like(self.key, dtype=torch.long)

    def record(
        self,
        at: tuple[torch.Tensor, torch.Tensor],
        scorer: int,
        value: torch.Tensor,
        rank: torch.Tensor,
    ) -> None:
        """Items `at` (rows, item ids) placed by `scorer` with score `value` at rank `rank`."""
        if self.retrieval is not None:
            self.scorer[at], self.value[at], self.rank[at] = scorer, value, rank


class AgentRanker:
    """Ranks as the agent would fill a slate: its slate first, in slot order, then the other
    retrieved candidates by its scores, then every other item by retrieval score.

    Candidates are the exact top M by retrieval score (no exploration draws), so that full
    ranking is the same on every run; consumed items score -inf and come last.
    """

    def __init__(self, core: SlateCore, scorer: CandidateScorer) -> None:
        self.core = core
        self.scorer = scorer

    def scores(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        """Rank keys (len(users), n_items): slate slots above the other candidates above the
        rest (retrieval scores in [-1, 1]), -inf on the history."""
        return self.rank(histories).key

    @torch.no_grad()
    def rank(
        self,
        histories: list[np.ndarray],
        retrieval: torch.Tensor | None = None,
        exclude: bool = True,
        explain: bool = False,
    ) -> AgentRanking:
        """The rank keys, and with `explain` the scoring that placed each item.

        `retrieval` (B, n_items) replaces the retriever's scores (e.g. a text's similarities);
        with `exclude=False` the history's items may be ranked too.
        """
        core = self.core
        packed = core.pack(histories)
        states = core.states(packed)
        recent = core.recent(packed)
        key = core.retrieval_scores(states, packed)  # a new tensor: the keys are written into it
        if retrieval is not None:
            consumed = torch.isinf(key) if exclude else torch.zeros_like(key, dtype=torch.bool)
            key = retrieval.to(key).masked_fill(consumed, -torch.inf)
        ranking = AgentRanking(key, key.clone() if explain else None)
        cand, cand_scores = core.candidates(key)
        features = core.candidate_features(states, packed, cand)
        chosen = torch.zeros_like(cand, dtype=torch.bool)
        rows = torch.arange(len(histories), device=cand.device)
        for slot, role in enumerate(core.turn_order):
            q = self._best(states, recent, cand, cand_scores, chosen, role, slot, features)
            pick = q.argmax(dim=-1)
            chosen[rows, pick] = True
            key[rows, cand[rows, pick]] = SLATE_KEY - slot
            if explain:
                best = q[rows, pick]
                ranking.record(
                    (rows, cand[rows, pick]), role, best, (q > best[:, None]).sum(-1) + 1
                )
        q = self._best(states, recent, cand, cand_scores, chosen, 0, core.slate_size, features)
        rest = core.action_mask(cand_scores, chosen)
        order = q.argsort(dim=-1, descending=True).argsort(dim=-1)
        at = (rows[:, None].expand_as(cand)[rest], cand[rest])
        key[at] = CANDIDATE_KEY - order[rest].float()
        ranking.record(at, core.n_roles, q[rest], order[rest] + 1)
        return ranking

    def _best(
        self,
        states: torch.Tensor,
        recent: torch.Tensor,
        cand: torch.Tensor,
        cand_scores: torch.Tensor,
        chosen: torch.Tensor,
        role: int,
        slot: int,
        features: torch.Tensor,
    ) -> torch.Tensor:
        """The agent's scores of the available candidates at this turn, -inf elsewhere."""
        core = self.core
        obs = core.observe(states, recent, cand, cand_scores, chosen, role, slot, 0, features)
        mask = core.action_mask(cand_scores, chosen)
        return self.scorer(obs, role).masked_fill(~mask, -torch.inf)

    def __call__(self, users: np.ndarray, histories: list[np.ndarray], k: int) -> torch.Tensor:
        return top_k(self.scores(users, histories), k)


def slate_core(env: Environment) -> SlateCore:
    """The env's slate mechanics, which an agent's ranking runs through."""
    core = getattr(env, "core", None)
    if not isinstance(core, SlateCore):
        raise PluginError(
            f"env '{type(env).__name__}' has no slate core (`core`, a SlateCore): "
            "an agent's ranking runs through one"
        )
    return core


def agent_ranker(env: Environment, agent: Agent) -> AgentRanker:
    return AgentRanker(slate_core(env), agent.candidate_scores)


def baseline_ranker(baseline: Baseline) -> ScoreRanker:
    return ScoreRanker(baseline.rank_scores)
