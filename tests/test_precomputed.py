"""`PrecomputedScores`: a scoring network with its per-item part computed over the catalog
scores every observation as the network does, for actors and Q-networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marlrec.agents import precomputed
from marlrec.agents.marl import MASKED_LOGIT, CandidateActor, CandidateQNet
from marlrec.agents.precomputed import PrecomputedScores
from marlrec.app import compose_config
from marlrec.pipeline import Pipeline, build
from tests.conftest import SMALL


def _observations(pipeline) -> torch.Tensor:
    """A session's observations: every slot of several slates, so some candidates are chosen."""
    aec = pipeline.env.make()
    aec.reset(seed=3)
    flat = []
    for _ in range(12):
        observation = aec.observe(aec.agent_selection)
        flat.append(observation["observation"])
        open_ = np.flatnonzero(observation["action_mask"])
        aec.step(int(open_[len(flat) % len(open_)]))
        if not aec.agents:
            break
    return torch.as_tensor(np.stack(flat), dtype=torch.float32)


@pytest.fixture(scope="module")
def featured_pipeline(offline_cache: Path) -> Pipeline:
    """Candidates that carry each union member's score and rank as features."""
    members = "[{name: ease},{name: content}]"
    union = ["retrieval=union", f"retrieval.members={members}", "retrieval.features=true"]
    return build(compose_config([*SMALL, *union]))


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Every weight drawn afresh: the zero-initialised direct terms and the near-zero output
    layer would otherwise hide differences."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0.0, 0.3)
    return net


@pytest.mark.parametrize("table", [True, False], ids=["similarity-table", "unit-rows"])
@pytest.mark.parametrize(
    "make",
    [
        lambda spec: CandidateActor(spec, 16, torch.device("cpu")),
        lambda spec: CandidateActor(spec, 16, torch.device("cpu"), role_embedding=True),
        lambda spec: CandidateQNet(spec, 16, torch.device("cpu"), direct_scores=True),
        lambda spec: CandidateQNet(spec, 16, torch.device("cpu"), role_embedding=True),
    ],
    ids=["actor", "shared-actor", "q-direct", "shared-q"],
)
@pytest.mark.parametrize("candidates", ["plain", "with-features"])
def test_precomputed_scores_equal_the_networks(
    request: pytest.FixtureRequest,
    candidates: str,
    make,
    table: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_pipeline = request.getfixturevalue(
        "small_pipeline" if candidates == "plain" else "featured_pipeline"
    )
    assert (small_pipeline.env.spec.layout.n_features > 0) == (candidates == "with-features")
    if not table:  # as for a catalog too large for an item-by-item table
        monkeypatch.setattr(precomputed, "SIMILARITY_TABLE_MAX", 0)
    net = _trained_like(make(small_pipeline.env.spec)).eval()
    fast = PrecomputedScores(net)
    assert (fast.similarity is not None) == table
    obs = _observations(small_pipeline)
    chosen = small_pipeline.env.spec.layout.split(obs)["chosen"]
    assert chosen.any() and not chosen.all()  # slates part-filled: to_slate matters
    with torch.no_grad():
        expected, got = net(obs)[0], fast(obs)
    open_ = expected > MASKED_LOGIT / 2
    assert torch.equal(open_, got > MASKED_LOGIT / 2)
    assert torch.allclose(got[open_], expected[open_], rtol=1e-5, atol=1e-4)
    # The network it was made from is untouched, and the copy holds no catalog table in its
    # state dict (tables are recomputed from the network and the catalog).
    assert isinstance(net.item_proj, torch.nn.Linear)
    tables = ("items", "items_own", "similarity", "scalar_cand")
    assert not any(k in fast.state_dict() for k in tables)
