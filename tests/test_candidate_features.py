"""`env.candidate_features`: which scalar features of the candidates the agents see."""

from __future__ import annotations

import pytest
import torch

from marlrec.envs.core import SlateConfig, SlateCore
from marlrec.pipeline import Pipeline
from marlrec.registry import PluginError


def observed(pipeline: Pipeline, features: list[str]) -> dict[str, torch.Tensor]:
    """One slate's first observation for the first users, with only `features` shown."""
    ctx = pipeline.env.ctx
    core = SlateCore(ctx, SlateConfig(candidate_features=features))
    histories = core.pack(list(ctx.data.train_histories[:8]))
    states = core.states(histories)
    candidates, scores = core.candidates(core.retrieval_scores(states, histories))
    chosen = torch.zeros_like(candidates, dtype=torch.bool)
    obs = core.observe(states, core.recent(histories), candidates, scores, chosen, 0, 0, 0)
    return core.layout.split(obs)


def test_left_out_features_read_as_zero_and_the_rest_is_unchanged(
    small_pipeline: Pipeline,
) -> None:
    both = observed(small_pipeline, ["score", "popularity"])
    assert both["popularity"].abs().sum() > 0 and both["scores"].abs().sum() > 0
    no_popularity = observed(small_pipeline, ["score"])
    assert torch.equal(no_popularity["popularity"], torch.zeros_like(both["popularity"]))
    assert torch.equal(no_popularity["scores"], both["scores"])
    assert torch.equal(no_popularity["candidates"], both["candidates"])
    none = observed(small_pipeline, [])
    assert not none["scores"].any() and not none["popularity"].any()


def test_default_shows_both_features() -> None:
    assert SlateConfig().candidate_features == ["score", "popularity"]


def test_an_unknown_feature_is_a_one_line_error() -> None:
    with pytest.raises(PluginError, match=r"env\.candidate_features: unknown feature 'clicks'"):
        SlateConfig(candidate_features=["score", "clicks"])
