"""The `movielens` dataset: real ML-100K when it is beside the checkout, and small written files."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marlrec import registry
from marlrec.data import RecData
from marlrec.datasets import movielens
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.registry import PluginError
from tests.conftest import ML100K

needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").is_file(), reason="MovieLens-100K is not at ../shared/data/ml-100k"
)

GENRES = ("unknown", "Action", "Comedy", "Drama")
# (id, "title (year)", release date, genre flags), as in u.item.
MOVIES = (
    (1, "Alpha (1990)", "01-Jan-1990", (0, 1, 0, 0)),
    (2, "Beta (1991)", "01-Jan-1991", (0, 0, 1, 1)),
    (3, "Gamma (1992)", "", (0, 0, 0, 1)),
    (4, "Delta", "12-Mar-1993", (1, 0, 0, 0)),
)
# (user, item, rating, time) in file order; user 7 rates items 2 and 4 at the same time.
RATINGS = (
    (7, 1, 4, 100),
    (3, 2, 5, 50),
    (7, 2, 3, 300),
    (3, 1, 2, 10),
    (7, 4, 5, 300),
    (3, 3, 4, 70),
    (5, 3, 1, 5),
    (5, 1, 5, 6),
    (5, 4, 3, 7),
)


def write_ml100k(
    folder: Path,
    ratings: tuple[tuple[int, int, int, int], ...] = RATINGS,
    movies: tuple[tuple[int, str, str, tuple[int, ...]], ...] = MOVIES,
) -> Path:
    """Small files in the ML-100K layout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    lines = [
        "|".join([str(i), t, d, "", f"http://x/{i}", *map(str, flags)]) for i, t, d, flags in movies
    ]
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (folder / "u.data").write_text("".join("\t".join(map(str, r)) + "\n" for r in ratings))
    return folder


def load(config: MovieLensDataset.Config, cache: Path) -> tuple[RecData, MovieLensDataset]:
    dataset = MovieLensDataset(config)
    return dataset.load(seed=0, cache_dir=cache), dataset


def assert_same(a: RecData, b: RecData) -> None:
    for name in ("user", "item", "time", "value"):
        np.testing.assert_array_equal(getattr(a.interactions, name), getattr(b.interactions, name))
        np.testing.assert_array_equal(getattr(a.split.train, name), getattr(b.split.train, name))
    np.testing.assert_array_equal(a.split.valid_item, b.split.valid_item)
    np.testing.assert_array_equal(a.split.test_item, b.split.test_item)
    assert a.item_text == b.item_text
    assert a.item_attributes.keys() == b.item_attributes.keys()
    for key, value in a.item_attributes.items():
        np.testing.assert_array_equal(value, b.item_attributes[key])
    assert (a.name, a.n_users, a.n_items) == (b.name, b.n_users, b.n_items)


# --- real ML-100K --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> tuple[RecData, Path]:
    if not (ML100K / "u.data").is_file():
        pytest.skip("MovieLens-100K is not at ../shared/data/ml-100k")
    cache = tmp_path_factory.mktemp("ml100k-cache")
    data, dataset = load(MovieLensDataset.Config(path=str(ML100K)), cache)
    assert not dataset.loaded_from_cache
    return data, cache


@needs_ml100k
def test_ml100k_sizes(ml100k: tuple[RecData, Path]) -> None:
    data, _ = ml100k
    assert (data.n_users, data.n_items, len(data.interactions)) == (943, 1682, 100000)
    assert len(data.item_text) == 1682
    np.testing.assert_array_equal(data.item_attributes["raw_id"], np.arange(1, 1683))
    assert set(np.unique(data.interactions.value)) == {1.0, 2.0, 3.0, 4.0, 5.0}


@needs_ml100k
def test_ml100k_one_test_and_one_valid_item_per_user(ml100k: tuple[RecData, Path]) -> None:
    data, _ = ml100k
    assert (data.split.test_item >= 0).all() and (data.split.valid_item >= 0).all()
    assert len(data.split.train) == 100000 - 2 * 943


@needs_ml100k
def test_ml100k_test_item_is_the_last_by_time(ml100k: tuple[RecData, Path]) -> None:
    data, _ = ml100k
    raw = pd.read_csv(ML100K / "u.data", sep="\t", names=["user", "item", "rating", "time"])
    # Stable: among equal timestamps the later line of u.data counts as later.
    raw = raw.sort_values(["user", "time"], kind="stable")
    last = raw.groupby("user")["item"].nth(-1).to_numpy()
    second_last = raw.groupby("user")["item"].nth(-2).to_numpy()
    raw_id = data.item_attributes["raw_id"]
    np.testing.assert_array_equal(raw_id[data.split.test_item], last)
    np.testing.assert_array_equal(raw_id[data.split.valid_item], second_last)
    inter = data.interactions
    assert (np.diff(inter.user) >= 0).all()
    same_user = np.diff(inter.user) == 0
    assert (np.diff(inter.time)[same_user] >= 0).all()


@needs_ml100k
def test_ml100k_item_text_and_attributes(ml100k: tuple[RecData, Path]) -> None:
    data, _ = ml100k
    toy_story = int(np.flatnonzero(data.item_attributes["raw_id"] == 1)[0])
    text = data.item_text[toy_story]
    assert text == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert data.item_attributes["year"][toy_story] == 1995
    assert data.item_attributes["genres"].shape == (1682, 18)  # the 19 flags less "unknown"
    assert data.item_attributes["genres"][toy_story].sum() == 3


@needs_ml100k
def test_ml100k_second_load_hits_the_cache(ml100k: tuple[RecData, Path]) -> None:
    data, cache = ml100k
    again, dataset = load(MovieLensDataset.Config(path=str(ML100K)), cache)
    assert dataset.loaded_from_cache
    assert dataset.cache_file is not None and dataset.cache_file.is_file()
    assert dataset.cache_file.parent == cache / "datasets"
    assert_same(again, data)


@needs_ml100k
def test_ml100k_cached_load_does_not_parse(
    ml100k: tuple[RecData, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, cache = ml100k

    def no_parsing(table: object) -> None:
        raise AssertionError(f"parsed {table} although the load is cached")

    monkeypatch.setattr(movielens, "read_table", no_parsing)
    again, dataset = load(MovieLensDataset.Config(path=str(ML100K)), cache)
    assert dataset.loaded_from_cache
    assert again.split.held_out("test")[0].tolist() == [data.split.test_item[0]]


@needs_ml100k
def test_ml100k_temporal_split(ml100k: tuple[RecData, Path]) -> None:
    _, cache = ml100k
    config = MovieLensDataset.Config(path=str(ML100K), split="temporal")
    data, _ = load(config, cache)
    split = data.split
    assert split.valid is not None and split.test is not None
    assert len(split.train) + len(split.valid) + len(split.test) == 100000
    assert abs(len(split.valid) - 10000) < 200 and abs(len(split.test) - 10000) < 200
    # One global clock: every training time is before every valid one, before every test one.
    assert split.train.time.max() < split.valid.time.min()
    assert split.valid.time.max() < split.test.time.min()
    held = split.held_out("test")
    assert sum(len(h) for h in held) == len(split.test)
    users = np.flatnonzero(split.test_item >= 0)
    assert all(held[u][0] == split.test_item[u] for u in users)
    for user in users[:50]:
        before = data.history_before(int(user), "test")
        assert len(before) == (data.interactions.user == user).sum() - len(held[user])


@needs_ml100k
def test_ml100k_random_split(ml100k: tuple[RecData, Path]) -> None:
    _, cache = ml100k
    config = MovieLensDataset.Config(path=str(ML100K), split="random")
    data, _ = load(config, cache)
    split = data.split
    assert split.valid is not None and split.test is not None
    assert len(split.train) + len(split.valid) + len(split.test) == 100000
    # Per user, floor(0.1 * n) each: a little under a tenth overall; every user keeps training.
    assert 9000 < len(split.valid) <= 10000 and 9000 < len(split.test) <= 10000
    assert (np.bincount(split.train.user, minlength=943) > 0).all()
    assert (split.test_item >= 0).all() and (split.valid_item >= 0).all()
    pairs = [
        set(zip(p.user.tolist(), p.item.tolist(), strict=True)) for p in (split.valid, split.test)
    ]
    assert not pairs[0] & pairs[1]
    other_seed = MovieLensDataset(config).load(seed=1, cache_dir=cache)
    assert not np.array_equal(other_seed.split.test.item, split.test.item)
    same_seed, dataset = load(config, cache)
    assert dataset.loaded_from_cache
    np.testing.assert_array_equal(same_seed.split.test.item, split.test.item)


@needs_ml100k
def test_ml100k_rating_threshold_is_cached_apart(ml100k: tuple[RecData, Path]) -> None:
    data, cache = ml100k
    liked, dataset = load(MovieLensDataset.Config(path=str(ML100K), rating_threshold=4), cache)
    assert not dataset.loaded_from_cache
    assert (liked.interactions.value >= 4).all()
    assert len(liked.interactions) == int((data.interactions.value >= 4).sum())


# --- small written files -------------------------------------------------------------------


def test_100k_layout_ids_order_and_ties(tmp_path: Path) -> None:
    data, _ = load(MovieLensDataset.Config(path=str(write_ml100k(tmp_path / "ml"))), tmp_path)
    assert (data.n_users, data.n_items) == (3, 4)
    inter = data.interactions
    # Users 3, 5, 7 become 0, 1, 2; user 7's two ratings at time 300 keep file order (2, then 4).
    np.testing.assert_array_equal(inter.user, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(inter.item, [0, 1, 2, 2, 0, 3, 0, 1, 3])
    np.testing.assert_array_equal(inter.time, [10, 50, 70, 5, 6, 7, 100, 300, 300])
    np.testing.assert_array_equal(data.split.test_item, [2, 3, 3])
    np.testing.assert_array_equal(data.split.valid_item, [1, 0, 1])
    assert data.item_text == [
        "Alpha (1990). Genres: Action.",
        "Beta (1991). Genres: Comedy, Drama.",
        "Gamma (1992). Genres: Drama.",  # no release date: the year comes from the title
        "Delta (1993). Genres: .",
    ]
    np.testing.assert_array_equal(data.item_attributes["year"], [1990, 1991, 1992, 1993])


def test_k_core_is_iterated_until_stable(tmp_path: Path) -> None:
    # Item 4 has two ratings; once it is dropped, user 5 has two, below the minimum of three.
    ratings = tuple(
        (user, item, 4, item)
        for user, items in ((3, (1, 2, 3)), (7, (1, 2, 3, 4)), (5, (1, 2, 4)), (9, (1, 2, 3)))
        for item in items
    )
    folder = write_ml100k(tmp_path / "ml", ratings=ratings)
    config = MovieLensDataset.Config(
        path=str(folder), min_user_interactions=3, min_item_interactions=3
    )
    data, _ = load(config, tmp_path)
    np.testing.assert_array_equal(data.item_attributes["raw_id"], [1, 2, 3])
    assert data.n_users == 3 and len(data.interactions) == 9


def test_changed_files_are_parsed_again(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    config = MovieLensDataset.Config(path=str(folder))
    first, _ = load(config, tmp_path)
    _, dataset = load(config, tmp_path)
    assert dataset.loaded_from_cache
    write_ml100k(folder, ratings=(*RATINGS, (9, 1, 1, 1), (9, 2, 1, 2), (9, 3, 1, 3)))
    changed, dataset = load(config, tmp_path)
    assert not dataset.loaded_from_cache
    assert changed.n_users == first.n_users + 1


def test_cache_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    load(MovieLensDataset.Config(path=str(write_ml100k(tmp_path / "ml"))), tmp_path / "c")
    files = [p.name for p in (tmp_path / "c" / "datasets").iterdir()]
    assert len(files) == 1 and files[0].startswith("movielens-") and files[0].endswith(".npz")


def test_ml1m_layout(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    movies = [
        "10::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Sci-Fi",
        "2::Café au lait (1993)::Comedy",
        "30::Untitled::",
    ]
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    ratings = ["1::10::5::100", "1::2::3::90", "1::30::4::100", "2::30::2::5", "2::2::4::6"]
    ratings.append("2::10::1::7")
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n")
    data, _ = load(MovieLensDataset.Config(path=str(folder)), tmp_path)
    assert data.item_text == [
        "Café au lait (1993). Genres: Comedy.",
        "Star Wars: Episode IV - A New Hope (1977). Genres: Action, Adventure, Sci-Fi.",
        "Untitled. Genres: .",
    ]
    np.testing.assert_array_equal(data.item_attributes["raw_id"], [2, 10, 30])
    np.testing.assert_array_equal(data.item_attributes["year"], [1993, 1977, -1])
    # Genre columns are alphabetical: Action, Adventure, Comedy, Sci-Fi.
    np.testing.assert_array_equal(
        data.item_attributes["genres"], [[0, 0, 1, 0], [1, 1, 0, 1], [0, 0, 0, 0]]
    )
    # User 1 rated items 10 and 30 both at time 100: file order decides, so 30 is the test item.
    np.testing.assert_array_equal(data.split.test_item, [2, 1])
    np.testing.assert_array_equal(data.split.valid_item, [1, 0])
    np.testing.assert_array_equal(data.interactions.value, [3, 5, 4, 2, 4, 1])


def test_tags_dat_of_ml10m(tmp_path: Path) -> None:
    folder = tmp_path / "ml-10m"
    folder.mkdir()
    (folder / "movies.dat").write_text("1::A (1990)::Drama\n2::B (1991)::Comedy\n")
    (folder / "ratings.dat").write_text("1::1::4.5::1\n1::2::3.5::2\n1::1::5::3\n")
    (folder / "tags.dat").write_text("1::2::dry wit::1\n2::2::cult::2\n3::2::Dry Wit::3\n")
    config = MovieLensDataset.Config(path=str(folder), text_template="{title}: {tags}")
    data, _ = load(config, tmp_path)
    assert data.item_text == ["A:", "B: dry wit, cult"]
    np.testing.assert_array_equal(data.interactions.value, [4.5, 3.5, 5.0])


def write_csv_family(folder: Path, *, tags: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        "5,Cosmos (1980\u20131981) ,Documentary\n"
        "7,No Year,(no genres listed)\n"
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,11,4.5,1000\n1,5,3.0,900\n1,7,0.5,1100\n2,5,5.0,10\n2,11,4.0,20\n2,7,2.5,30\n"
    )
    if tags:
        (folder / "tags.csv").write_text(
            "userId,movieId,tag,timestamp\n"
            "1,11,politics,1\n2,11,Romance,2\n3,11,romance,3\n4,11,,4\n1,5,space,5\n"
        )
    return folder


def test_csv_family_with_tags(tmp_path: Path) -> None:
    config = MovieLensDataset.Config(
        path=str(write_csv_family(tmp_path / "ml-latest-small")),
        text_template="{title} ({year}). Genres: {genres}. Tags: {tags}.",
    )
    data, _ = load(config, tmp_path)
    np.testing.assert_array_equal(data.item_attributes["raw_id"], [5, 7, 11])
    assert data.item_text == [
        "Cosmos (1980). Genres: Documentary. Tags: space.",
        "No Year. Genres: . Tags: .",
        # "Romance" twice (any case) comes before "politics" once; the empty tag is skipped.
        "American President, The (1995). Genres: Comedy, Drama, Romance. Tags: Romance, politics.",
    ]
    np.testing.assert_array_equal(data.interactions.value, [3.0, 4.5, 0.5, 5.0, 4.0, 2.5])
    assert data.item_attributes["genres"].shape == (3, 4)  # no "(no genres listed)" column


def test_csv_family_without_tags(tmp_path: Path) -> None:
    config = MovieLensDataset.Config(path=str(write_csv_family(tmp_path / "ml", tags=False)))
    data, _ = load(config, tmp_path)
    assert data.item_text[0] == "Cosmos (1980). Genres: Documentary."


# --- download ------------------------------------------------------------------------------


def make_zip(tmp_path: Path) -> tuple[Path, str]:
    """A zip in the ML-100K layout under a top folder, as GroupLens ships them."""
    files = write_ml100k(tmp_path / "src" / "ml-100k")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(files.iterdir()):
            z.write(f, f"ml-100k/{f.name}")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.mark.parametrize("verify", [True, False])
def test_download_from_a_file_url(tmp_path: Path, verify: bool) -> None:
    archive, digest = make_zip(tmp_path)
    config = MovieLensDataset.Config(
        download=True, url=archive.as_uri(), sha256=digest if verify else ""
    )
    data, _ = load(config, tmp_path / "cache")
    assert (data.n_users, data.n_items) == (3, 4)
    release = tmp_path / "cache" / "datasets" / "ml-100k"
    assert sorted(p.name for p in release.iterdir()) == ["u.data", "u.genre", "u.item"]
    archive.unlink()  # the unzipped release is reused; nothing is fetched again
    again, dataset = load(config, tmp_path / "cache")
    assert dataset.loaded_from_cache
    assert_same(again, data)


def test_download_with_a_wrong_checksum_fails_and_leaves_nothing(tmp_path: Path) -> None:
    archive, digest = make_zip(tmp_path)
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    config = MovieLensDataset.Config(download=True, url=archive.as_uri(), sha256=wrong)
    with pytest.raises(PluginError, match=r"ml-100k\.zip .*has sha256 .*expected") as err:
        load(config, tmp_path / "cache")
    assert "\n" not in str(err.value)
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []


# --- configuration -------------------------------------------------------------------------


def test_registered_as_an_entry_point(tmp_path: Path) -> None:
    assert registry.load("data", "movielens") is MovieLensDataset
    section = {"name": "movielens", "path": str(write_ml100k(tmp_path / "ml"))}
    dataset = registry.create("data", section)
    assert dataset.load(seed=0, cache_dir=tmp_path).n_items == 4


def test_relative_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_ml100k(tmp_path / "ml")
    monkeypatch.chdir(tmp_path)
    assert load(MovieLensDataset.Config(path="ml"), tmp_path / "c")[0].n_items == 4
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load(MovieLensDataset.Config(path="~/ml"), tmp_path / "c")[0].n_items == 4
    assert os.path.isdir(tmp_path / "c" / "datasets")
