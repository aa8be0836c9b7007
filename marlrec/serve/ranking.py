"""The agents' top-k for many queries in one forward pass, with where each item came from.

`rank_explained` ranks as evaluation does (`marlrec.evaluation.rankers.AgentRanker`): the roles
fill the slate in turn order from the retrieved candidates, the first role's scores order the
remaining candidates, and retrieval orders every other item. Besides the items it keeps, for
each one, the role or stage that placed it, its score there and its rank in that scoring.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from marlrec.envs import CandidateScorer
from marlrec.envs.core import SlateCore
from marlrec.evaluation.rankers import AgentRanker, Retrieved, retrieve, slate_core
from marlrec.pipeline import Pipeline
from marlrec.rewards import SlateOutcome

SLATE, AFTER_SLATE, RETRIEVAL = "slate", "after_slate", "retrieval"


@dataclass(frozen=True)
class Placement:
    """One recommended item and the scoring that put it where it is."""

    item: int
    stage: str  # SLATE, AFTER_SLATE or RETRIEVAL
    scored_by: str  # the role whose scores placed it, or "retrieval"
    score: float  # its score in that scoring
    rank: int  # 1-based rank among the items that scoring could still choose


@torch.no_grad()
def rank_explained(ranker: AgentRanker, retrieved: Retrieved, k: int) -> list[list[Placement]]:
    """Top-k placements per row of a retrieval stage (`marlrec.evaluation.rankers.retrieve`),
    as evaluation ranks them (`AgentRanker`)."""
    ranked = ranker.fill(retrieved, explain=True)
    assert ranked.retrieval is not None
    top = ranked.key.topk(k, dim=-1).indices
    return [
        _placements(
            ranker.core,
            ranked.retrieval[b],
            top[b],
            ranked.scorer[b],
            ranked.value[b],
            ranked.rank[b],
        )
        for b in range(len(top))
    ]


class ServedRanking:
    """A served version's ranking: its pipeline and scorer, one object so that a pass never
    mixes a version's catalog with another's networks, and the retrieval stages of the known
    users it ranked.

    A known user's history is fixed for as long as a version is served, and so is their
    retrieval stage: the state, every item's retrieval score (SASRec's forward pass among them),
    the candidates and their features. It is kept, so that only the roles' scoring runs when
    they ask again; `keep_known` does it for every known user ahead of time. History and text
    queries are retrieved each time. At most `MEMORY_FLOATS` numbers are kept; the least
    recently asked user goes first.
    """

    MEMORY_FLOATS = 1 << 25  # 128 MB of float32

    def __init__(self, p: Pipeline, scorer: CandidateScorer) -> None:
        self.p = p
        self.ranker = AgentRanker(slate_core(p.env), scorer)
        self.core = self.ranker.core
        per_user = p.data.n_items + self.core.layout.size  # a key row, about one observation
        self.capacity = max(1, self.MEMORY_FLOATS // per_user)
        self._kept: OrderedDict[int, Retrieved] = OrderedDict()
        self._lock = threading.Lock()  # passes run on the event loop, lone answers in threads

    def keep_known(self, histories: list[np.ndarray], chunk: int = 256) -> None:
        """Retrieve and keep known users' stages before they ask, so that no first request
        pays for them: every user's when they fit, else the most active ones'."""
        active = np.argsort([-len(h) for h in histories], kind="stable")[: self.capacity]
        order = active[::-1].tolist()  # the most active last in, so the last to be dropped
        for start in range(0, len(order), chunk):
            users = order[start : start + chunk]
            self.retrieve([histories[u] for u in users], users)

    def rank(
        self, histories: list[np.ndarray], users: list[int], ks: list[int]
    ) -> list[list[Placement]]:
        """Each history's top-`ks[b]` placements; `users[b]` >= 0 names a known user."""
        rows = rank_explained(self.ranker, self.retrieve(histories, users), max(ks))
        return [row[:k] for row, k in zip(rows, ks, strict=True)]

    def rank_text(self, similarity: torch.Tensor, pseudo: np.ndarray, k: int) -> list[Placement]:
        """Top-k placements for a text: its `similarity` to every item as retrieval scores,
        its best matches `pseudo` as the history the state is read from (not excluded)."""
        retrieved = retrieve(self.core, [pseudo], similarity[None], exclude=False)
        return rank_explained(self.ranker, retrieved, k)[0]

    def retrieve(self, histories: list[np.ndarray], users: list[int]) -> Retrieved:
        """The retrieval stage of each history, a known user's kept."""
        if all(user < 0 for user in users):
            return retrieve(self.core, histories)
        with self._lock:
            rows = {b: self._kept[u] for b, u in enumerate(users) if u >= 0 and u in self._kept}
        missing = [b for b in range(len(users)) if b not in rows]
        if missing:
            fresh = retrieve(self.core, [histories[b] for b in missing])
            rows |= {b: fresh.row(i) for i, b in enumerate(missing)}
        with self._lock:
            for b, user in enumerate(users):
                if user >= 0:
                    self._kept[user] = rows[b]
                    self._kept.move_to_end(user)  # the last to be dropped
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)
        return Retrieved.cat([rows[b] for b in range(len(users))])


def _placements(
    core: SlateCore,
    scores: torch.Tensor,
    top: torch.Tensor,
    scorer: torch.Tensor,
    value: torch.Tensor,
    rank: torch.Tensor,
) -> list[Placement]:
    finite = torch.isfinite(scores[top])
    top = top[: int(finite.sum())]  # past them, only consumed items are left
    retrieval_rank = (scores[None, :] > scores[top][:, None]).sum(dim=-1) + 1
    columns = zip(
        top.tolist(),
        scorer[top].tolist(),
        value[top].tolist(),
        rank[top].tolist(),
        retrieval_rank.tolist(),
        strict=True,
    )
    rows = []
    for item, by, score, place, retrieval_place in columns:
        if by < 0:
            rows.append(Placement(item, RETRIEVAL, "retrieval", score, retrieval_place))
        else:
            stage = SLATE if by < core.n_roles else AFTER_SLATE
            rows.append(Placement(item, stage, core.roles[by % core.n_roles], score, place))
    return rows


def reward_contributions(p: Pipeline, user: int, slate: list[Placement]) -> list[dict[str, float]]:
    """Each slate item's weighted contribution to each reward term, if the user clicked it.

    The term on the slate as served with that one item clicked, minus the term on the slate
    without the item and no click: the click terms give what the click is worth, slate terms
    (diversity, novelty) what the item adds to the slate. Stateful terms (with a `reset`, such
    as coverage) are left out: scoring would change their record. Zero contributions are dropped.
    """
    core = slate_core(p.env)
    items = np.array([row.item for row in slate], dtype=np.int64)
    roles = np.array([core.roles.index(row.scored_by) for row in slate], dtype=np.int64)
    rewards = {name: r for name, r in core.ctx.rewards.items() if not hasattr(r, "reset")}
    out = []
    for position in range(len(slate)):
        clicks = np.arange(len(slate)) == position
        keep = ~clicks
        shown = SlateOutcome(user, items, roles, clicks, step=0)
        without = SlateOutcome(user, items[keep], roles[keep], clicks[keep], step=0)
        terms = {
            name: r.weight * (float(r.score(shown)) - float(r.score(without)))
            for name, r in rewards.items()
        }
        out.append({name: round(v, 6) for name, v in terms.items() if v != 0.0})
    return out


def nearest_history(
    p: Pipeline, items: list[int], history: np.ndarray, n: int
) -> list[list[tuple[int, float]]]:
    """For each item, the `n` history items most like it and their cosine similarity."""
    if len(history) == 0:
        return [[] for _ in items]
    unit = torch.nn.functional.normalize(p.item_emb, dim=-1)
    similarity = unit[torch.as_tensor(items)] @ unit[torch.as_tensor(history)].T
    top = similarity.topk(min(n, len(history)), dim=-1)
    return [
        [(int(history[j]), round(float(s), 4)) for s, j in zip(vals, idx, strict=True)]
        for vals, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
