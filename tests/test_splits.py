"""Splits: leave-one-out, global temporal cutoffs and seeded per-user random ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marlrec.data import (
    TEST,
    TRAIN,
    VALID,
    Interactions,
    RecData,
    Split,
    leave_one_out,
    split_interactions,
    split_labels,
)
from marlrec.datasets.csv import CsvDataset
from marlrec.datasets.synthetic import SyntheticDataset
from marlrec.registry import PluginError


def random_log(seed: int, n: int, size: int) -> list[tuple[int, int, float]]:
    """Random (user, item, time) rows, values below n, sorted by (user, time)."""
    rows = np.random.default_rng(seed).integers(0, n, size=(size, 3)).tolist()
    return sorted(((u, i, float(t)) for u, i, t in rows), key=lambda r: (r[0], r[2]))


def make(rows: list[tuple[int, int, float]]) -> Interactions:
    """(user, item, time) rows, which must already be sorted by (user, time)."""
    user, item, time = (np.array(c) for c in zip(*rows, strict=True))
    return Interactions(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        time=time.astype(np.float64),
        value=np.ones(len(rows), dtype=np.float32),
    )


def recdata(inter: Interactions, split: Split, n_users: int) -> RecData:
    n_items = int(inter.item.max()) + 1
    return RecData(
        name="t",
        n_users=n_users,
        n_items=n_items,
        interactions=inter,
        item_text=[f"item {i}" for i in range(n_items)],
        split=split,
    )


def as_lists(arrays: list[np.ndarray]) -> list[list[int]]:
    return [a.tolist() for a in arrays]


# User 0: five items over time; user 1: two items; user 2: three items, the last two tied.
ROWS = [(0, 10, 1), (0, 11, 5), (0, 12, 9), (0, 13, 13), (0, 14, 17)]
ROWS += [(1, 20, 2), (1, 21, 6)]
ROWS += [(2, 30, 3), (2, 31, 11), (2, 32, 11)]


# --- leave-one-out -------------------------------------------------------------------------


def test_leave_one_out_holds_out_the_last_two_and_keeps_short_users_in_train() -> None:
    inter = make(ROWS)
    split = leave_one_out(inter, 3)
    np.testing.assert_array_equal(split.test_item, [14, -1, 32])
    np.testing.assert_array_equal(split.valid_item, [13, -1, 31])
    assert as_lists(split.held_out("test")) == [[14], [], [32]]
    assert as_lists(split.held_out("valid")) == [[13], [], [31]]
    data = recdata(inter, split, 3)
    assert data.history_before(0, "valid").tolist() == [10, 11, 12]
    assert data.history_before(0, "test").tolist() == [10, 11, 12, 13]
    assert data.history_before(1, "test").tolist() == [20, 21]
    assert data.history_before(2, "test").tolist() == [30, 31]
    np.testing.assert_array_equal(split_interactions(inter, 3).test_item, split.test_item)


def test_a_split_given_only_valid_and_test_items_still_answers_everything() -> None:
    """The shape other code builds by hand: held-out items without held-out interactions."""
    inter = make([(0, 1, 1), (0, 2, 2), (1, 3, 1)])
    split = Split(train=inter, valid_item=np.array([5, -1]), test_item=np.array([6, 7]))
    assert as_lists(split.held_out("valid")) == [[5], []]
    assert as_lists(split.held_out("test")) == [[6], [7]]
    data = recdata(inter, split, 2)
    assert data.history_before(0, "test").tolist() == [1, 2, 5]
    assert data.history_before(1, "test").tolist() == [3]
    with pytest.raises(ValueError, match="target must be 'valid' or 'test'"):
        data.history_before(0, "train")


# --- temporal ------------------------------------------------------------------------------


def test_temporal_cutoffs_are_global_and_equal_times_stay_together() -> None:
    inter = make(ROWS)
    # 10 interactions: valid from the 6th smallest time (9), test from the 8th (11, twice).
    labels = split_labels(inter, 3, method="temporal", ratios=(0.5, 0.2, 0.3))
    split = split_interactions(inter, 3, method="temporal", ratios=(0.5, 0.2, 0.3))
    assert (labels[inter.time < 9] == TRAIN).all()
    assert (labels[(inter.time >= 9) & (inter.time < 11)] == VALID).all()
    assert (labels[inter.time >= 11] == TEST).all()
    assert as_lists(split.held_out("valid")) == [[12], [], []]
    assert as_lists(split.held_out("test")) == [[13, 14], [], [31, 32]]
    np.testing.assert_array_equal(split.test_item, [13, -1, 31])  # the first held out
    np.testing.assert_array_equal(split.valid_item, [12, -1, -1])
    data = recdata(inter, split, 3)
    assert data.history_before(0, "test").tolist() == [10, 11, 12]
    assert data.history_before(2, "test").tolist() == [30]


def test_temporal_history_is_everything_before_the_period() -> None:
    inter = make(random_log(0, 50, 400))
    split = split_interactions(inter, 50, method="temporal", ratios=(0.7, 0.15, 0.15))
    data = recdata(inter, split, 50)
    assert split.valid is not None and split.test is not None
    valid_from, test_from = split.valid.time.min(), split.test.time.min()
    assert split.train.time.max() < valid_from <= split.valid.time.max() < test_from
    for user in range(50):
        before = data.history_before(user, "test")
        mine = inter.user == user
        expected = inter.item[mine & (inter.time < test_from)]
        np.testing.assert_array_equal(before, expected)  # time order, as in the log


def test_temporal_cold_start_user_has_an_empty_history() -> None:
    inter = make([(0, 1, 1), (0, 2, 2), (0, 3, 3), (0, 4, 4), (1, 5, 5)])
    split = split_interactions(inter, 2, method="temporal", ratios=(0.6, 0.2, 0.2))
    assert split.test_item[1] == 5 and len(recdata(inter, split, 2).history_before(1, "test")) == 0


# --- random --------------------------------------------------------------------------------


def recbole_split_ids(tot: int, ratios: list[float]) -> list[int]:
    """RecBole 1.2's `Dataset._calcu_split_ids`, copied as the reference."""
    cnt = [int(ratios[i] * tot) for i in range(len(ratios))]
    cnt[0] = tot - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * tot < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


@pytest.mark.parametrize("ratios", [[0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.5, 0.25, 0.25]])
def test_random_part_sizes_round_as_recbole_does(ratios: list[float]) -> None:
    counts = np.arange(1, 41)
    user = np.repeat(np.arange(len(counts)), counts)
    inter = make([(int(u), k, float(k)) for k, u in enumerate(user)])
    labels = split_labels(inter, len(counts), method="random", ratios=ratios, seed=3)
    for u, n in enumerate(counts.tolist()):
        sizes = np.bincount(labels[user == u], minlength=3).tolist()
        assert sizes == recbole_split_ids(n, ratios), f"{n} interactions"


def test_random_split_is_seeded_disjoint_and_complete() -> None:
    inter = make(random_log(1, 200, 3000))
    first = split_labels(inter, 200, method="random", seed=7)
    np.testing.assert_array_equal(first, split_labels(inter, 200, method="random", seed=7))
    assert (first != split_labels(inter, 200, method="random", seed=8)).any()
    split = split_interactions(inter, 200, method="random", seed=7)
    assert split.valid is not None and split.test is not None
    assert len(split.train) + len(split.valid) + len(split.test) == len(inter)
    per_user = np.bincount(split.train.user, minlength=200)
    assert (per_user[np.bincount(inter.user, minlength=200) > 0] >= 1).all()
    # Held out in time order, and the history before test merges train and valid by time.
    data = recdata(inter, split, 200)
    for user in range(0, 200, 17):
        mine = inter.user == user
        held = first[mine] != TEST
        np.testing.assert_array_equal(data.history_before(user, "test"), inter.item[mine][held])
        test_times = split.test.time[split.test.user == user]
        assert (np.diff(test_times) >= 0).all()


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="split must be one of loo, temporal, random"):
        split_labels(make(ROWS), 3, method="kfold")  # type: ignore[arg-type]


# --- through the dataset plugins -----------------------------------------------------------


def write_csv(tmp_path: Path, rows: list[tuple[str, str, int]]) -> str:
    """Written once, so that its stamp, and with it the cache key, stays the same."""
    path = tmp_path / "log.csv"
    if not path.exists():
        path.write_text("user_id,item_id,time\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return str(path)


LOG = [(f"u{u}", f"i{(u * 7 + k) % 13}", 10 * k + u) for u in range(6) for k in range(8)]


def load_csv(tmp_path: Path, seed: int = 0, **options: object) -> tuple[RecData, CsvDataset]:
    c = CsvDataset.Config(path=write_csv(tmp_path, LOG), time_col="time", **options)  # type: ignore[arg-type]
    dataset = CsvDataset(c)
    return dataset.load(seed=seed, cache_dir=tmp_path / "cache"), dataset


def test_cache_key_holds_every_split_option_and_the_random_seed(tmp_path: Path) -> None:
    loo, d = load_csv(tmp_path)
    files = {d.cache_file}
    _, d = load_csv(tmp_path, seed=5)
    assert d.loaded_from_cache and d.cache_file in files  # the seed plays no part in loo
    for options in (
        {"split": "temporal"},
        {"split": "temporal", "split_ratios": [0.7, 0.1, 0.2]},
        {"split": "random"},
    ):
        _, d = load_csv(tmp_path, **options)
        assert not d.loaded_from_cache and d.cache_file not in files
        files.add(d.cache_file)
    first, d = load_csv(tmp_path, seed=1, split="random")
    assert not d.loaded_from_cache and d.cache_file not in files
    again, d = load_csv(tmp_path, seed=1, split="random")
    assert d.loaded_from_cache
    assert as_lists(again.split.held_out("test")) == as_lists(first.split.held_out("test"))
    assert as_lists(again.split.held_out("valid")) == as_lists(first.split.held_out("valid"))
    np.testing.assert_array_equal(again.split.train.item, first.split.train.item)
    assert len(loo.split.train) == len(LOG) - 12


def test_temporal_split_that_leaves_a_part_empty_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "same-time.csv"
    path.write_text("user_id,item_id,time\n" + "".join(f"u{k % 3},i{k},5\n" for k in range(12)))
    dataset = CsvDataset(CsvDataset.Config(path=str(path), time_col="time", split="temporal"))
    with pytest.raises(PluginError) as err:
        dataset.load(seed=0, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert message.startswith(f"dataset 'csv': {path}: split=temporal")
    assert "leaves no train interactions" in message and "1 distinct times" in message
    assert not (tmp_path / "cache" / "datasets").exists()


def test_random_split_needs_a_user_with_three_interactions(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("user_id,item_id\n" + "".join(f"u{k // 2},i{k}\n" for k in range(10)))
    dataset = CsvDataset(CsvDataset.Config(path=str(path), split="random"))
    with pytest.raises(PluginError, match=r"leaves no valid interactions.*most per user: 2"):
        dataset.load(seed=0, cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("options", "what"),
    [
        ({"split_ratios": [0.8, 0.2]}, "split_ratios must be three positive fractions"),
        ({"split_ratios": [0.8, 0.3, 0.1]}, "summing to 1, got [0.8, 0.3, 0.1]"),
        ({"split_ratios": [1.0, 0.0, 0.0]}, "three positive fractions"),
        ({"split": "kfold"}, "split must be one of loo, temporal, random, got 'kfold'"),
    ],
)
def test_bad_split_options(options: dict[str, object], what: str) -> None:
    with pytest.raises(PluginError, match=r"^dataset 'csv': ") as err:
        CsvDataset(CsvDataset.Config(path="x.csv", **options))  # type: ignore[arg-type]
    assert what in str(err.value)
    with pytest.raises(PluginError, match=r"^dataset 'synthetic': "):
        SyntheticDataset(SyntheticDataset.Config(**options))  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["temporal", "random"])
def test_synthetic_data_takes_every_split(method: str) -> None:
    config = SyntheticDataset.Config(n_users=40, n_items=60, max_interactions=15, split=method)  # type: ignore[arg-type]
    data = SyntheticDataset(config).load(seed=0, cache_dir=Path("unused"))
    split = data.split
    assert split.valid is not None and split.test is not None
    assert len(split.train) + len(split.valid) + len(split.test) == len(data.interactions)
    assert 0.05 < len(split.test) / len(data.interactions) < 0.2
    again = SyntheticDataset(config).load(seed=0, cache_dir=Path("unused"))
    np.testing.assert_array_equal(again.split.test.item, split.test.item)
