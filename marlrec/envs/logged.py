"""Imitation data: logged choices as the roles would have seen them in a slate.

For each history and its next logged item, the observation of a random turn whose candidates
include the logged item, and the candidate index a role imitating the log would choose.
"""

from __future__ import annotations

import numpy as np
import torch

from marlrec.envs import LoggedChoices
from marlrec.envs.core import SlateCore


@torch.no_grad()
def logged_choices(
    core: SlateCore, histories: list[np.ndarray], targets: np.ndarray, rng: np.random.Generator
) -> LoggedChoices:
    """Each history's next logged item among its retrieved candidates, at a random turn.

    The turn (slot and slate number) is drawn uniformly, and the slots before it hold
    other candidates, so the observations cover every role and every stage of a slate.
    Histories whose logged item is not retrieved are left out: inserting it would tell the
    network which candidate is the answer.
    """
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
    obs = core.observe(states[keep], recent, cand, cand_scores, chosen, role, slot, slate_number)
    return LoggedChoices(rows=rows, obs=obs, roles=role, actions=found.float().argmax(dim=1))
