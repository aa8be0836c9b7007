"""Rankers: what evaluation and serving ask of a policy, the catalog ranked for each user.

A `Ranker` maps users and what each had consumed to their top-k item ids, history excluded.
Baselines rank by their own scores (`ScoreRanker`); an agent ranks through the slate
environment's mechanics (`AgentRanker`): the slate it would build first, then the other
candidates by its scores, then every other item by retrieval score. Environments themselves
no longer rank.
"""

from __future__ import annotations

from collections.abc import Callable
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


class AgentRanker:
    """Ranks as the agent would fill a slate: its slate first, in slot order, then the other
    retrieved candidates by its scores, then every other item by retrieval score.

    Candidates are the exact top M by retrieval score (no exploration draws), so that full
    ranking is the same on every run; consumed items score -inf and come last.
    """

    def __init__(self, core: SlateCore, scorer: CandidateScorer) -> None:
        self.core = core
        self.scorer = scorer

    @torch.no_grad()
    def scores(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        """Rank keys (len(users), n_items): slate slots above the other candidates above the
        rest (retrieval scores in [-1, 1]), -inf on the history."""
        core = self.core
        packed = core.pack(histories)
        states = core.states(packed)
        recent = core.recent(packed)
        key = core.retrieval_scores(states, packed)  # a new tensor: the keys are written into it
        cand, cand_scores = core.candidates(key)
        chosen = torch.zeros_like(cand, dtype=torch.bool)
        rows = torch.arange(len(histories), device=cand.device)
        for slot, role in enumerate(core.turn_order):
            pick = self._best(states, recent, cand, cand_scores, chosen, role, slot).argmax(dim=-1)
            chosen[rows, pick] = True
            key[rows, cand[rows, pick]] = SLATE_KEY - slot
        q = self._best(states, recent, cand, cand_scores, chosen, 0, core.slate_size)
        rest = core.action_mask(cand_scores, chosen)
        order = q.argsort(dim=-1, descending=True).argsort(dim=-1).float()
        key[rows[:, None].expand_as(cand)[rest], cand[rest]] = CANDIDATE_KEY - order[rest]
        return key

    def _best(
        self,
        states: torch.Tensor,
        recent: torch.Tensor,
        cand: torch.Tensor,
        cand_scores: torch.Tensor,
        chosen: torch.Tensor,
        role: int,
        slot: int,
    ) -> torch.Tensor:
        """The agent's scores of the available candidates at this turn, -inf elsewhere."""
        core = self.core
        obs = core.observe(states, recent, cand, cand_scores, chosen, role, slot, 0)
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
