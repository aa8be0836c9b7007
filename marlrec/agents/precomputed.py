"""A candidate-scoring network with its per-item part computed once over the catalog.

For serving, a scoring network's work on a candidate splits into what depends on the item
alone and what depends on the user and the slate. `CandidateEncoder` projects each candidate's
384-d text embedding with its two scalar features (`item_proj`), and the head's candidate layer
`W = [W1, W2, W3, w4]` reads `[cand, cand * user, cand * slate, to_slate]`. All of it is
linear in what depends on the item, so with `We`, `Ws` the embedding and scalar columns of
`item_proj`'s weight and `E` the catalog's embeddings:

    cand = T[id] + scalars @ Ws.T                        T  = E @ We.T + bias   (n_items, hidden)
    W1 @ cand = T1[id] + scalars @ (W1 @ Ws).T           T1 = T @ W1.T          (n_items, hidden)
    to_slate = max over the chosen c of S[id, c]         S  = unit(E) @ unit(E).T

`PrecomputedScores` holds `T`, `T1` and (for catalogs up to `SIMILARITY_TABLE_MAX` items) `S`.
Per candidate it gathers 2 x hidden numbers and runs one matrix product, `[W2, W3]` over
`[T[id] * user, T[id] * slate]`; the scalar features and `to_slate` enter through what one
unit of each adds to the layer's output, computed once per observation. The network's head
layers after the candidate layer are reused as they are. Ranking the validation users, this
replaces a gather of a 384-d embedding per candidate, two matrix products over 386 and 385
inputs and a cosine between every two candidates. The scores equal the network's up to float
rounding.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from marlrec.agents.marl import CandidateActor, CandidateQNet

# The largest catalog whose item-by-item cosine table (n_items^2 floats, 16 MB at most, part of
# each ONNX file) is precomputed; beyond it each observation's candidates are compared through
# their unit embeddings, as in training.
SIMILARITY_TABLE_MAX = 2048

HeadNetwork = CandidateActor | CandidateQNet  # the networks whose candidate layer it rewrites


class PrecomputedScores(nn.Module):
    """obs (B, obs_size) -> scores (B, n_candidates), as `net(obs)[0]` computes them.

    The tables are buffers left out of the state dict: they are recomputed from the network
    and the catalog, so a saved copy holds the weights only.
    """

    items: torch.Tensor  # (n_items, hidden): T
    items_own: torch.Tensor  # (n_items, hidden): T1
    scalar_cand: torch.Tensor  # (S, hidden), S scalar features per candidate
    scalar_own: torch.Tensor  # (S, hidden)
    to_slate_weight: torch.Tensor  # (1, 1, hidden)
    similarity: torch.Tensor | None  # (n_items, n_items)

    def __init__(self, net: HeadNetwork) -> None:
        super().__init__()
        net = copy.deepcopy(net).cpu().eval()
        hidden = net.item_proj.out_features
        emb, unit = _catalog(net, "item_emb"), _catalog(net, "item_unit")
        d = emb.shape[1]
        candidate = getattr(net, net.CANDIDATE_LAYER)
        with torch.no_grad():
            w_emb, w_scalar = net.item_proj.weight[:, :d], net.item_proj.weight[:, d:]
            w_cand = candidate.weight[:, :hidden]
            table = emb @ w_emb.T + net.item_proj.bias  # T
            # Two tables, not one to slice: ONNX Runtime copies slices.
            self.register_buffer("items", table, False)
            self.register_buffer("items_own", table @ w_cand.T, False)
            # What one unit of each scalar feature adds to cand and to W1 @ cand.
            self.register_buffer("scalar_cand", w_scalar.T.clone(), False)
            self.register_buffer("scalar_own", (w_cand @ w_scalar).T.clone(), False)
            self.register_buffer(
                "to_slate_weight", candidate.weight[None, :, 3 * hidden].clone(), False
            )
            # The candidate layer over [cand * user, cand * slate].
            self.cross = nn.Linear(2 * hidden, hidden, bias=False)
            self.cross.weight.copy_(candidate.weight[:, hidden : 3 * hidden])
            similarity = unit @ unit.T if len(emb) <= SIMILARITY_TABLE_MAX else None
            self.register_buffer("similarity", similarity, False)
        # The rest of the network, without the two layers the tables replace.
        net.item_proj = nn.Identity()  # type: ignore[assignment]
        setattr(net, net.CANDIDATE_LAYER, nn.Identity())
        self.net = net
        self.requires_grad_(False).eval()  # scoring only: traced and quantised as constants

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        net = self.net
        parts = net.layout.split(obs)
        ids, chosen = parts["candidates"], parts["chosen"]
        # (B, M, S): retrieval score, popularity and the retriever's candidate features, as
        # the network's own inputs order them.
        scalars = torch.stack([parts["scores"], parts["popularity"]], dim=-1)
        if net.layout.n_features:  # decided in Python: ONNX can't trace an empty slice
            scalars = torch.cat([scalars, parts["features"]], -1)
        gathered = F.embedding(ids, self.items)  # (B, M, h): T[id]
        user = net.state_proj(self._user_state(parts))
        if net.role_embedding is not None:
            user = user + net.role_embedding(parts["role"].argmax(dim=-1))
        # The mean chosen cand, its table part and its scalar part summed apart.
        count = chosen.sum(1, keepdim=True).clamp(min=1)
        chosen_scalars = (chosen[..., None] * scalars).sum(1) @ self.scalar_cand
        slate = (torch.bmm(chosen[:, None], gathered)[:, 0] + chosen_scalars) / count
        context = torch.cat([user, slate, parts["role"], parts["progress"]], dim=-1)
        # cand = T[id] + scalars @ scalar_cand, so the candidate layer's output is
        # T1[id] + cross([T[id] * user, T[id] * slate]) + [scalars, to_slate] @ per_row, where
        # per_row holds, per observation, what a unit of each scalar and of to_slate adds.
        scaled = torch.stack([user, slate], 1)[:, None]  # (B, 1, 2, h)
        units = (self.scalar_cand[None, :, None] * scaled).flatten(2)  # (B, S, 2h)
        # (The to_slate row is broadcast by arithmetic: a traced shape would be a constant.)
        to_slate_row = torch.zeros_like(user)[:, None] + self.to_slate_weight
        per_row = torch.cat([self.cross(units) + self.scalar_own, to_slate_row], 1)
        extra = torch.cat([scalars, self._to_slate(ids, chosen)[..., None]], -1)  # (B, M, S + 1)
        crossed = (gathered[..., None, :] * scaled).flatten(2)  # (B, M, 2h)
        # In place: each pass over (B, M, hidden) numbers counts at this size.
        candidate_hidden = (
            self.cross(crossed).add_(F.embedding(ids, self.items_own)).baddbmm_(extra, per_row)
        )
        return net.head(context, chosen, scalars, candidate_hidden)

    def _to_slate(self, ids: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """(B, M) cosine of each candidate to the closest chosen one (-1 when none is)."""
        if self.similarity is not None:
            n, m = self.similarity.shape[0], ids.shape[1]
            pairs = (ids[:, :, None] * n + ids[:, None, :]).reshape(-1)
            # index_select and embedding gather rows several times faster than indexing.
            cosine = self.similarity.reshape(-1).index_select(0, pairs).reshape(-1, m, m)
        else:
            unit = _catalog(self.net, "item_unit")[ids]
            cosine = unit @ unit.transpose(1, 2)
        return cosine.masked_fill(chosen[:, None, :] == 0, -1.0).amax(-1)

    def _user_state(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        net = self.net
        if net.state_model is None:
            return parts["state"]
        history = parts["history"]
        embedded = _catalog(net, "item_emb")[history.clamp(min=0)]
        return net.state_model.forward_with_ids(embedded, (history >= 0).sum(dim=1), history)


def _catalog(net: nn.Module, name: str) -> torch.Tensor:
    """One of the network's catalog buffers (`item_emb`, `item_unit`)."""
    value = getattr(net, name)
    assert isinstance(value, torch.Tensor)
    return value
