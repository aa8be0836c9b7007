"""Imitation data: logged choices as the roles would have seen them in a slate.

For each history and its next logged item, the observation of a random turn whose candidates
include the logged item, and the candidate index a role imitating the log would choose.
`LoggedLog` serves a whole imitation phase: the training histories packed once, and each
logged position's retrieval computed once when retrieval cannot change during the phase.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import Histories
from marlrec.envs import LoggedChoices
from marlrec.envs.core import SlateCore

# Positions not retrieved yet, and positions whose logged item is not among the candidates.
UNKNOWN, MISSED = -2, -1


def logged_positions(histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every (user, position) whose item follows at least one earlier training item."""
    followers = np.maximum(np.array([len(h) for h in histories], dtype=np.int64) - 1, 0)
    users = np.repeat(np.arange(len(histories)), followers)
    starts = np.cumsum(followers) - followers
    return users, np.arange(len(users)) - starts[users] + 1


@dataclass(frozen=True)
class Retrieved:
    """The histories whose logged next item is among their candidates, and where it is."""

    rows: torch.Tensor  # (N,) which of the given histories, in their order
    candidates: torch.Tensor  # (N, M)
    cand_scores: torch.Tensor  # (N, M)
    actions: torch.Tensor  # (N,) the logged item's candidate position


@torch.no_grad()
def retrieve_logged(core: SlateCore, histories: Histories, targets: torch.Tensor) -> Retrieved:
    """Retrieval for each history, and which retrieve their logged next item (`targets`)."""
    cand, cand_scores = core.candidates(core.retrieval_scores(core.states(histories), histories))
    found = cand == targets[:, None]
    keep = found.any(dim=1)
    rows = keep.nonzero().squeeze(1)
    return Retrieved(rows, cand[keep], cand_scores[keep], found[keep].float().argmax(dim=1))


@torch.no_grad()
def at_random_turns(
    core: SlateCore, histories: Histories, retrieved: Retrieved, rng: np.random.Generator
) -> LoggedChoices:
    """The observations of the retrieved logged choices, each at a random turn.

    The turn (slot and slate number) is drawn uniformly, and the slots before it hold
    other candidates, so the observations cover every role and every stage of a slate.
    """
    cand, cand_scores = retrieved.candidates, retrieved.cand_scores
    n, device = len(cand), cand.device
    found = torch.zeros_like(cand, dtype=torch.bool)
    found[torch.arange(n, device=device), retrieved.actions] = True
    slot = torch.as_tensor(rng.integers(0, core.slate_size, n), device=device)
    slate_number = torch.as_tensor(rng.integers(0, core.max_slates, n), device=device)
    # Fill the earlier slots with random candidates other than the logged item.
    noise = torch.as_tensor(rng.random(cand.shape), device=device).masked_fill(found, 2.0)
    chosen = noise.argsort(dim=1).argsort(dim=1) < slot[:, None]
    chosen &= torch.isfinite(cand_scores)
    role = torch.as_tensor(core.turn_order, device=device)[slot]
    shown = histories.select(retrieved.rows.to(histories.lengths.device))
    states, recent = core.states(shown), core.recent(shown)
    obs = core.observe(states, recent, cand, cand_scores, chosen, role, slot, slate_number)
    rows = retrieved.rows.cpu()
    return LoggedChoices(rows=rows, obs=obs, roles=role, actions=retrieved.actions)


def logged_choices(
    core: SlateCore, histories: list[np.ndarray], targets: np.ndarray, rng: np.random.Generator
) -> LoggedChoices:
    """Each history's next logged item among its retrieved candidates, at a random turn.

    Histories whose logged item is not retrieved are left out: inserting it would tell the
    network which candidate is the answer.
    """
    packed = core.pack(histories)
    wanted = torch.as_tensor(targets, dtype=torch.long, device=packed.items.device)
    return at_random_turns(core, packed, retrieve_logged(core, packed, wanted), rng)


class LoggedLog:
    """The logged choices of the training histories, for many imitation steps.

    `choices(drawn, rng)` gives what `logged_choices` gives for the histories before the
    drawn logged positions, from the same random draws, without building them in Python.
    When the state model and the retrieval are fixed (a state model without trainable
    parameters), each position's retrieval is computed the first time it is drawn and kept.
    """

    def __init__(self, core: SlateCore, histories: list[np.ndarray]) -> None:
        self.core = core
        self.packed = core.pack(histories)
        device = self.packed.items.device
        users, positions = logged_positions(histories)
        self.users = torch.as_tensor(users, device=device)
        self.positions = torch.as_tensor(positions, device=device)
        fixed = not any(p.requires_grad for p in core.ctx.state.parameters())
        self.memo = RetrievalMemo(len(users), core.n_candidates, device) if fixed else None

    def __len__(self) -> int:
        return len(self.users)

    def histories(self, drawn: torch.Tensor) -> tuple[Histories, torch.Tensor]:
        """The histories before the drawn positions, and the items logged there."""
        users, positions = self.users[drawn], self.positions[drawn]
        targets = self.packed.items[self.packed.offsets[users] + positions]
        return self.packed.prefixes(users, positions), targets

    def choices(self, drawn: np.ndarray, rng: np.random.Generator) -> LoggedChoices:
        """The retrieved logged choices at the drawn positions (indices below `len(self)`)."""
        index = torch.as_tensor(drawn, dtype=torch.long, device=self.users.device)
        histories, targets = self.histories(index)
        if self.memo is None:
            retrieved = retrieve_logged(self.core, histories, targets)
        else:
            self.memo.fill(index, lambda new: retrieve_logged(self.core, *self.histories(new)))
            retrieved = self.memo.lookup(index)
        return at_random_turns(self.core, histories, retrieved, rng)


class RetrievalMemo:
    """Per logged position: unknown, missed, or where its retrieved candidates are kept."""

    def __init__(self, n_positions: int, n_candidates: int, device: torch.device) -> None:
        self.where = torch.full((n_positions,), UNKNOWN, dtype=torch.long, device=device)
        self.size = 0
        self.candidates = torch.empty(0, n_candidates, dtype=torch.long, device=device)
        self.cand_scores = torch.empty(0, n_candidates, device=device)
        self.actions = torch.empty(0, dtype=torch.long, device=device)

    def fill(self, index: torch.Tensor, retrieve: Callable[[torch.Tensor], Retrieved]) -> None:
        """Retrieve the positions in `index` not retrieved yet, once each, and keep them."""
        new = torch.unique(index[self.where[index] == UNKNOWN])
        if len(new) == 0:
            return
        found = retrieve(new)
        self.where[new] = MISSED
        self.where[new[found.rows]] = self.size + torch.arange(len(found.rows), device=new.device)
        self._append(found)

    def lookup(self, index: torch.Tensor) -> Retrieved:
        where = self.where[index]
        rows = (where >= 0).nonzero().squeeze(1)
        at = where[rows]
        return Retrieved(rows, self.candidates[at], self.cand_scores[at], self.actions[at])

    def _append(self, found: Retrieved) -> None:
        end = self.size + len(found.rows)
        if end > len(self.actions):  # grow by doubling: appends stay linear overall
            capacity = max(end, 2 * len(self.actions))
            self.candidates = _grown(self.candidates, capacity)
            self.cand_scores = _grown(self.cand_scores, capacity)
            self.actions = _grown(self.actions, capacity)
        self.candidates[self.size : end] = found.candidates
        self.cand_scores[self.size : end] = found.cand_scores
        self.actions[self.size : end] = found.actions
        self.size = end


def _grown(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    grown = tensor.new_empty(rows, *tensor.shape[1:])
    grown[: len(tensor)] = tensor
    return grown
