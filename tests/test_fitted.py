"""Fitted artefacts: fitted once per run, shared by the baseline and the retrieval, cached."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from marlrec import fitted
from marlrec.baselines.ease import EASEBaseline
from marlrec.data import RecData
from marlrec.registry import PluginError
from marlrec.retrieval.ease import EASERetriever, ease_weights, fit_ease
from tests.test_slate_env import data_fixture


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> RecData:
    return data_fixture("synthetic", tmp_path_factory)


@pytest.fixture
def cache(tmp_path: Path):
    fitted._memo.clear()
    fitted.use_cache_dir(tmp_path)
    yield tmp_path
    fitted.use_cache_dir(None)
    fitted._memo.clear()


def test_ease_is_fitted_once_and_shared(
    synthetic: RecData, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def counting_fit(data: RecData, l2: float) -> torch.Tensor:
        calls.append(l2)
        return fit_ease(data, l2)

    monkeypatch.setattr("marlrec.retrieval.ease.fit_ease", counting_fit)
    baseline = EASEBaseline(EASEBaseline.Config(l2=50.0), data=synthetic, item_emb=None, seed=0)
    assert ease_weights(synthetic, 50.0) is baseline.weights
    assert calls == [50.0]
    ease_weights(synthetic, 60.0)  # another setting is another artefact
    assert calls == [50.0, 60.0]


def test_a_second_run_loads_from_disk_and_says_so(
    synthetic: RecData, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = ease_weights(synthetic, 50.0)
    assert len(list((cache / "fitted").glob("ease-*.pt"))) == 1
    fitted._memo.clear()  # a new process
    with caplog.at_level(logging.INFO, logger="marlrec.fitted"):
        second = ease_weights(synthetic, 50.0)
    assert torch.equal(first, second)
    assert [r.message for r in caplog.records] == [
        f"ease: loaded from the cache ({next((cache / 'fitted').glob('*.pt')).name})"
    ]


def test_the_key_changes_with_the_training_data(synthetic: RecData) -> None:
    train = synthetic.split.train
    key = fitted.fingerprint(train.user, train.item, 1.0)
    assert key == fitted.fingerprint(train.user.copy(), train.item.copy(), 1.0)
    changed = train.item.copy()
    changed[0] = (changed[0] + 1) % synthetic.n_items
    assert key != fitted.fingerprint(train.user, changed, 1.0)


def test_ease_retrieval_needs_a_positive_l2() -> None:
    with pytest.raises(PluginError, match=r"retrieval.l2 must be positive, got 0.0"):
        EASERetriever.Config(l2=0.0)
