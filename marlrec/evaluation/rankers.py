"""Rankers: what evaluation and serving ask of a policy, the catalog ranked for each user.

A `Ranker` maps users and what each had consumed to their top-k item ids, history excluded.
Baselines rank by their own scores (`ScoreRanker`); an agent ranks through the slate
environment's mechanics (`AgentRanker`): the slate it would build first, then the other
candidates by its scores, then every other item by retrieval score. Environments themselves
no longer rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
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


@dataclass
class Retrieved:
    """A batch's retrieval stage, row by row: the user states and recent items the roles read,
    every item's retrieval key (-inf on excluded items), and the top-M candidates with their
    keys and the retriever's features. It depends on the history alone, so a row can be kept
    and reused for as long as the history and the model are the same."""

    states: torch.Tensor  # (B, state dim)
    recent: torch.Tensor  # (B, history_len)
    key: torch.Tensor  # (B, n_items)
    candidates: torch.Tensor  # (B, M)
    scores: torch.Tensor  # (B, M)
    features: torch.Tensor  # (B, M, n_features)

    def row(self, b: int) -> Retrieved:
        """Row `b` as a batch of one, in storage of its own (not a view of the batch)."""
        return Retrieved(*(part[b : b + 1].clone() for part in self.parts()))

    @classmethod
    def cat(cls, rows: list[Retrieved]) -> Retrieved:
        return cls(*(torch.cat(parts) for parts in zip(*(r.parts() for r in rows), strict=True)))

    def parts(self) -> tuple[torch.Tensor, ...]:
        """The tensors, in field order."""
        return tuple(getattr(self, f.name) for f in fields(self))


@torch.no_grad()
def retrieve(
    core: SlateCore,
    histories: list[np.ndarray],
    retrieval: torch.Tensor | None = None,
    exclude: bool = True,
) -> Retrieved:
    """The retrieval stage of ranking for these histories, exact (no exploration draws).

    `retrieval` (B, n_items) replaces the retriever's scores (e.g. a text's similarities);
    with `exclude=False` the history's items may be ranked too.
    """
    packed = core.pack(histories)
    states = core.states(packed)
    key = core.retrieval_scores(states, packed)
    if retrieval is not None:
        consumed = torch.isinf(key) if exclude else torch.zeros_like(key, dtype=torch.bool)
        key = retrieval.to(key).masked_fill(consumed, -torch.inf)
    cand, cand_scores = core.candidates(key)
    features = core.candidate_features(states, packed, cand)
    return Retrieved(states, core.recent(packed), key, cand, cand_scores, features)


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

    def rank(
        self,
        histories: list[np.ndarray],
        retrieval: torch.Tensor | None = None,
        exclude: bool = True,
        explain: bool = False,
    ) -> AgentRanking:
        """The rank keys, and with `explain` the scoring that placed each item (`retrieve`
        tells what `retrieval` and `exclude` do)."""
        return self.fill(retrieve(self.core, histories, retrieval, exclude), explain)

    @torch.no_grad()
    def fill(self, retrieved: Retrieved, explain: bool = False) -> AgentRanking:
        """The rank keys from a retrieval stage (left unchanged), with `explain` the scoring
        that placed each item."""
        core, cand = self.core, retrieved.candidates
        key = retrieved.key.clone()  # the keys are written into it
        ranking = AgentRanking(key, retrieved.key.clone() if explain else None)
        chosen = torch.zeros_like(cand, dtype=torch.bool)
        rows = torch.arange(len(cand), device=cand.device)
        for slot, role in enumerate(core.turn_order):
            q = self._best(retrieved, chosen, role, slot)
            pick = q.argmax(dim=-1)
            chosen[rows, pick] = True
            key[rows, cand[rows, pick]] = SLATE_KEY - slot
            if explain:
                best = q[rows, pick]
                ranking.record(
                    (rows, cand[rows, pick]), role, best, (q > best[:, None]).sum(-1) + 1
                )
        q = self._best(retrieved, chosen, 0, core.slate_size)
        rest = core.action_mask(retrieved.scores, chosen)
        order = q.argsort(dim=-1, descending=True).argsort(dim=-1)
        at = (rows[:, None].expand_as(cand)[rest], cand[rest])
        key[at] = CANDIDATE_KEY - order[rest].float()
        ranking.record(at, core.n_roles, q[rest], order[rest] + 1)
        return ranking

    def _best(self, r: Retrieved, chosen: torch.Tensor, role: int, slot: int) -> torch.Tensor:
        """The agent's scores of the available candidates at this turn, -inf elsewhere."""
        core = self.core
        obs = core.observe(
            r.states, r.recent, r.candidates, r.scores, chosen, role, slot, 0, r.features
        )
        mask = core.action_mask(r.scores, chosen)
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
