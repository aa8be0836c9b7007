"""Imitation data: logged choices as the roles would have seen them in a slate.

For each history and its next logged item, the observation of a random turn whose candidates
include the logged item, and the candidate index a role imitating the log would choose.
`LoggedLog` serves a whole imitation phase: the training histories packed once, and when
retrieval cannot change during the phase, every logged position's candidates, state and recent
items computed once up front (`PrecomputedChoices`), so that a step only draws turns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from marlrec.data import Histories
from marlrec.envs import LoggedChoices
from marlrec.envs.core import SlateCore


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
    features: torch.Tensor  # (N, M, n_features) the retriever's candidate features


@torch.no_grad()
def retrieve_logged(core: SlateCore, histories: Histories, targets: torch.Tensor) -> Retrieved:
    """Retrieval for each history, and which retrieve their logged next item (`targets`)."""
    states = core.states(histories)
    cand, cand_scores = core.candidates(core.retrieval_scores(states, histories))
    features = core.candidate_features(states, histories, cand)
    found = cand == targets[:, None]
    keep = found.any(dim=1)
    rows = keep.nonzero().squeeze(1)
    actions = found[keep].float().argmax(dim=1)
    return Retrieved(rows, cand[keep], cand_scores[keep], actions, features[keep])


@torch.no_grad()
def at_random_turns(
    core: SlateCore, histories: Histories, retrieved: Retrieved, rng: np.random.Generator
) -> LoggedChoices:
    """The observations of the retrieved logged choices, each at a random turn (see
    `observe_at_random_turns`); `histories` are the ones `retrieved` was computed for."""
    shown = histories.select(retrieved.rows.to(histories.lengths.device))
    return observe_at_random_turns(core, core.states(shown), core.recent(shown), retrieved, rng)


@torch.no_grad()
def observe_at_random_turns(
    core: SlateCore,
    states: torch.Tensor,
    recent: torch.Tensor,
    retrieved: Retrieved,
    rng: np.random.Generator,
) -> LoggedChoices:
    """The observations of the retrieved logged choices, each at a random turn, from the
    states and recent items of the histories they were retrieved for (one row each).

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
    obs = core.observe(
        states, recent, cand, cand_scores, chosen, role, slot, slate_number, retrieved.features
    )
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
    parameters), every position's retrieval, state and recent items are computed once, up
    front, within `cache_mb` megabytes (`PrecomputedChoices`); otherwise, or beyond that
    budget, each step retrieves the positions it draws. `path` says which and why.
    """

    def __init__(self, core: SlateCore, histories: list[np.ndarray], cache_mb: int) -> None:
        self.core = core
        self.packed = core.pack(histories)
        device = self.packed.items.device
        users, positions = logged_positions(histories)
        self.users = torch.as_tensor(users, device=device)
        self.positions = torch.as_tensor(positions, device=device)
        self.precomputed: PrecomputedChoices | None = None
        if any(p.requires_grad for p in core.ctx.state.parameters()):
            self.path = "retrieved at every step: the state model is trainable"
        elif cache_mb == 0:
            self.path = "retrieved at every step: trainer.imitation_cache_mb is 0"
        elif len(self) == 0:
            self.path = "no logged positions to precompute"
        else:
            started = time.perf_counter()
            self.precomputed = PrecomputedChoices.build(self, cache_mb * 2**20)
            seconds = time.perf_counter() - started
            if self.precomputed is None:
                self.path = (
                    f"retrieved at every step: the {len(self)} logged positions' candidates "
                    f"need more than trainer.imitation_cache_mb={cache_mb} MB"
                )
            else:
                self.path = (
                    f"precomputed for all {len(self)} logged positions in {seconds:.1f} s "
                    f"({self.precomputed.nbytes / 2**20:.0f} MB of "
                    f"trainer.imitation_cache_mb={cache_mb})"
                )

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
        if self.precomputed is not None:
            return self.precomputed.choices(self.core, index, rng)
        histories, targets = self.histories(index)
        retrieved = retrieve_logged(self.core, histories, targets)
        return at_random_turns(self.core, histories, retrieved, rng)


@dataclass(frozen=True)
class PrecomputedChoices:
    """What the observation of each logged choice needs apart from its random turn: for the
    positions whose logged item is retrieved, their candidates, scores, state and recent items.

    The turn is drawn at each step from the step's generator exactly as the per-step path
    draws it, so both paths give the same batches from the same seed.
    """

    where: torch.Tensor  # (positions,) row below of each position; -1: logged item not retrieved
    candidates: torch.Tensor  # (kept, M)
    cand_scores: torch.Tensor  # (kept, M)
    actions: torch.Tensor  # (kept,)
    states: torch.Tensor  # (kept, state dim)
    recent: torch.Tensor  # (kept, history_len)
    features: torch.Tensor  # (kept, M, n_features)

    @property
    def nbytes(self) -> int:
        return _nbytes(*vars(self).values())

    @classmethod
    @torch.no_grad()
    def build(cls, log: LoggedLog, budget: int) -> PrecomputedChoices | None:
        """Every position of `log`, retrieved in chunks; None as soon as the kept rows would
        take more than `budget` bytes."""
        core, n_positions = log.core, len(log)
        device = log.users.device
        # A chunk's retrieval scores (chunk x n_items floats) stay near 64 MB.
        chunk = max(1, 2**24 // core.ctx.data.n_items)
        where = torch.full((n_positions,), -1, dtype=torch.long, device=device)
        fields: list[list[torch.Tensor]] = [[] for _ in range(6)]
        kept, used = 0, _nbytes(where)
        for start in range(0, n_positions, chunk):
            index = torch.arange(start, min(start + chunk, n_positions), device=device)
            histories, targets = log.histories(index)
            found = retrieve_logged(core, histories, targets)
            shown = histories.select(found.rows.to(histories.lengths.device))
            states, recent = core.states(shown), core.recent(shown)
            part = (
                found.candidates,
                found.cand_scores,
                found.actions,
                states,
                recent,
                found.features,
            )
            used += _nbytes(*part)
            if used > budget:
                return None
            where[index[found.rows]] = kept + torch.arange(len(found.rows), device=device)
            kept += len(found.rows)
            for field_parts, tensor in zip(fields, part, strict=True):
                field_parts.append(tensor)
        return cls(where, *(_joined(field_parts) for field_parts in fields))

    def choices(
        self, core: SlateCore, index: torch.Tensor, rng: np.random.Generator
    ) -> LoggedChoices:
        """The logged choices at the positions in `index`, each at a random turn."""
        where = self.where[index]
        rows = (where >= 0).nonzero().squeeze(1)
        at = where[rows]
        retrieved = Retrieved(
            rows, self.candidates[at], self.cand_scores[at], self.actions[at], self.features[at]
        )
        return observe_at_random_turns(core, self.states[at], self.recent[at], retrieved, rng)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.element_size() * t.numel() for t in tensors)


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The parts concatenated, the list emptied as it goes (one field's copy at a time)."""
    joined = torch.cat(parts)
    parts.clear()
    return joined
