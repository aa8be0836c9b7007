"""Bad input to the `movielens` dataset: one line that names the file, and the line or column.

The `csv`, `amazon_reviews` and split-specific cases are in their own test files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from marlrec import io
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.registry import PluginError
from tests.test_movielens import RATINGS, write_csv_family, write_ml100k


def load(tmp_path: Path, folder: Path, **options: object) -> None:
    config = MovieLensDataset.Config(path=str(folder), **options)  # type: ignore[arg-type]
    MovieLensDataset(config).load(seed=0, cache_dir=tmp_path / "cache")


def error(tmp_path: Path, folder: Path, **options: object) -> str:
    with pytest.raises(PluginError) as err:
        load(tmp_path, folder, **options)
    message = str(err.value)
    assert "\n" not in message and message.startswith("dataset 'movielens': ")
    # A load that fails caches nothing, not even a temporary file.
    assert not (tmp_path / "cache" / "datasets").exists()
    return message


def at(path: Path, line: int) -> str:
    """How a message locates a line: the file's full path, then the line number."""
    return re.escape(f"{path}, line {line}: ")


# --- folders and files ---------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    message = error(tmp_path, tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and "not a folder" in message


def test_missing_file_names_the_layout(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    (folder / "u.item").unlink()
    message = error(tmp_path, folder)
    assert f"{folder / 'u.item'} is missing" in message
    assert "ML-100K layout needs u.data, u.item, u.genre" in message


def test_folder_without_a_release_lists_every_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    message = error(tmp_path, tmp_path / "empty")
    for expected in ("u.data, u.item, u.genre", "ratings.dat, movies.dat", "ratings.csv"):
        assert expected in message


def test_missing_column_names_column_and_file(tmp_path: Path) -> None:
    folder = write_csv_family(tmp_path / "ml")
    (folder / "ratings.csv").write_text("userId,movieId,score,timestamp\n1,11,4,1\n")
    message = error(tmp_path, folder)
    assert f"{folder / 'ratings.csv'}: no column 'rating'" in message
    assert "columns: userId, movieId, score, timestamp" in message


def test_missing_tag_column(tmp_path: Path) -> None:
    folder = write_csv_family(tmp_path / "ml")
    (folder / "tags.csv").write_text("userId,movieId,label,timestamp\n1,11,x,1\n")
    assert f"{folder / 'tags.csv'}: no column 'tag'" in error(tmp_path, folder)


def test_empty_file(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    (folder / "u.data").write_text("")
    assert f"{folder / 'u.data'}: has no interactions" in error(tmp_path, folder)


# --- malformed rows ------------------------------------------------------------------------


def rewrite_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text(encoding="latin-1").splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")


@pytest.mark.parametrize(
    ("line", "text", "what"),
    [
        (3, "7\t2\t3", "expected 4 fields separated by '\\t', found 3"),
        (5, "7\t4\t5\t300\t1", "expected 4 fields separated by '\\t', found 5"),
        (4, "3\t1\tfour\t10", "rating 'four' is not a number"),
        (6, "3\t3\t4\tlater", "time 'later' is not an integer"),
        (2, "x3\t2\t5\t50", "user 'x3' is not an integer"),
        (7, "5\t\t1\t5", "empty item"),
    ],
)
def test_malformed_ratings_row(tmp_path: Path, line: int, text: str, what: str) -> None:
    folder = write_ml100k(tmp_path / "ml")
    rewrite_line(folder / "u.data", line, text)
    assert re.search(at(folder / "u.data", line) + re.escape(what), error(tmp_path, folder))


def test_every_row_with_an_extra_field(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    (folder / "u.data").write_text("".join("\t".join(map(str, (*r, 0))) + "\n" for r in RATINGS))
    assert re.search(at(folder / "u.data", 1) + "expected 4 fields", error(tmp_path, folder))


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    rows = ["\t".join(map(str, r)) for r in RATINGS]
    (folder / "u.data").write_text("\n".join([*rows[:3], "", "", rows[3], "3\t3\tx\t1"]) + "\n")
    assert re.search(at(folder / "u.data", 7) + "rating 'x'", error(tmp_path, folder))


def test_line_numbers_count_quoted_line_breaks(tmp_path: Path) -> None:
    folder = write_csv_family(tmp_path / "ml")
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n11,"Two\nLines (1995)",Drama\n5,Five (1990),Drama\nseven,X,Drama\n'
    )
    assert re.search(
        at(folder / "movies.csv", 5) + "movieId 'seven' is not an integer",
        error(tmp_path, folder),
    )


def test_unclosed_quote(tmp_path: Path) -> None:
    folder = write_csv_family(tmp_path / "ml")
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n11,A (1990),Drama\n5,"Open (1991),Drama\n7,B (1992),Drama\n'
    )
    message = error(tmp_path, folder)
    assert re.search(at(folder / "movies.csv", 3) + "expected 3 fields .*never closed", message)


def test_malformed_dat_row(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_text("1::A (1990)::Drama\n2::B (1991)::Drama\n")
    (folder / "ratings.dat").write_text("1::1::5::10\n1::2::4:11\n")
    message = error(tmp_path, folder)
    assert re.search(at(folder / "ratings.dat", 2) + "expected 4 fields separated by '::'", message)


def test_ratings_csv_non_numeric_timestamp(tmp_path: Path) -> None:
    folder = write_csv_family(tmp_path / "ml")
    with (folder / "ratings.csv").open("a") as f:
        f.write("3,5,4.0,yesterday\n")
    message = error(tmp_path, folder)
    assert re.search(
        at(folder / "ratings.csv", 8) + "timestamp 'yesterday' is not an integer", message
    )


def test_invalid_text_encoding(tmp_path: Path) -> None:
    folder = write_csv_family(tmp_path / "ml")
    with (folder / "movies.csv").open("ab") as f:
        f.write(b"9,Caf\xe9 (1990),Drama\n")
    assert re.search(at(folder / "movies.csv", 5) + "not valid utf-8", error(tmp_path, folder))


def test_bad_genre_index(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    (folder / "u.genre").write_text("unknown|0\nAction|1\nComedy|5\nDrama|3\n")
    assert re.search(at(folder / "u.genre", 3) + "genre index 5", error(tmp_path, folder))


# --- ids -----------------------------------------------------------------------------------


def test_duplicate_item_id(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    with (folder / "u.item").open("a") as f:
        f.write("2|Beta again (1999)|01-Jan-1999||http://x|0|0|0|1\n")
    message = error(tmp_path, folder)
    assert re.search(
        at(folder / "u.item", 5) + re.escape("duplicate movie id 2 (first on line 2)"), message
    )


def test_duplicate_item_id_in_movies_csv(tmp_path: Path) -> None:
    folder = write_csv_family(tmp_path / "ml")
    with (folder / "movies.csv").open("a") as f:
        f.write("11,Again (2000),Drama\n")
    assert re.search(
        at(folder / "movies.csv", 5) + "duplicate movie id 11", error(tmp_path, folder)
    )


def test_rating_of_an_unknown_item(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    rewrite_line(folder / "u.data", 5, "7\t99\t5\t300")
    message = error(tmp_path, folder)
    assert re.search(at(folder / "u.data", 5) + "movie id 99 is not in u.item", message)


# --- results that cannot be split ----------------------------------------------------------


def test_nothing_left_after_the_rating_threshold(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    message = error(tmp_path, folder, rating_threshold=6.0)
    assert f"{folder / 'u.data'}: no rating is >= rating_threshold=6.0" in message


def test_nothing_left_after_k_core(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    message = error(tmp_path, folder, min_item_interactions=4)
    assert f"{folder / 'u.data'}: k-core filtering" in message
    assert "min_item_interactions=4" in message


def test_no_user_with_a_held_out_item(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml", ratings=((1, 1, 5, 1), (1, 2, 5, 2), (2, 1, 5, 1)))
    message = error(tmp_path, folder)
    assert f"{folder / 'u.data'}: no user has the 3 interactions" in message
    assert "most per user: 2" in message


def test_a_user_with_too_few_interactions_stays_in_train(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml", ratings=(*RATINGS, (9, 1, 5, 1)))
    data = MovieLensDataset(MovieLensDataset.Config(path=str(folder))).load(
        seed=0, cache_dir=tmp_path
    )
    lonely = data.n_users - 1
    assert data.split.test_item[lonely] == -1 and data.split.valid_item[lonely] == -1
    assert (data.split.train.user == lonely).sum() == 1
    assert (np.delete(data.split.test_item, lonely) >= 0).all()


# --- configuration and download ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "what"),
    [
        ({}, "set data.path=<folder of an unzipped MovieLens release> or data.download=true"),
        ({"path": "x", "download": True}, "not both"),
        ({"path": "x", "sha256": "abc"}, "sha256 must be 64 hexadecimal digits"),
        ({"path": "x", "text_template": "{title} {plot}"}, "unknown field {plot}"),
        ({"path": "x", "text_template": "{title"}, "text_template '{title' is malformed"),
        ({"path": "x", "min_user_interactions": -1}, "must be >= 0"),
    ],
)
def test_bad_config(options: dict[str, object], what: str) -> None:
    with pytest.raises(PluginError, match=re.escape(what)) as err:
        MovieLensDataset(MovieLensDataset.Config(**options))  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_download_from_nowhere(tmp_path: Path) -> None:
    url = (tmp_path / "absent.zip").as_uri()
    config = MovieLensDataset.Config(download=True, url=url)
    with pytest.raises(PluginError, match=re.escape(f"could not download {url}")):
        MovieLensDataset(config).load(seed=0, cache_dir=tmp_path)


def test_download_of_something_not_a_zip(tmp_path: Path) -> None:
    fake = tmp_path / "ml-100k.zip"
    fake.write_text("not a zip")
    config = MovieLensDataset.Config(download=True, url=fake.as_uri())
    with pytest.raises(PluginError, match=r"ml-100k\.zip from .* is not a zip archive"):
        MovieLensDataset(config).load(seed=0, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []


# --- the cache -----------------------------------------------------------------------------


def test_a_write_that_fails_leaves_no_cache_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_ml100k(tmp_path / "ml")

    def half_then_fail(file: IO[bytes], **arrays: Any) -> None:
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(io.np, "savez", half_then_fail)
        with pytest.raises(OSError, match="No space left"):
            load(tmp_path, folder)
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []
    dataset = MovieLensDataset(MovieLensDataset.Config(path=str(folder)))
    dataset.load(seed=0, cache_dir=tmp_path / "cache")
    assert not dataset.loaded_from_cache
    assert [p.name for p in (tmp_path / "cache" / "datasets").iterdir()] == [
        dataset.cache_file.name if dataset.cache_file else ""
    ]


def test_a_damaged_cache_file_is_rebuilt(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    dataset = MovieLensDataset(MovieLensDataset.Config(path=str(folder)))
    first = dataset.load(seed=0, cache_dir=tmp_path)
    assert dataset.cache_file is not None
    dataset.cache_file.write_bytes(dataset.cache_file.read_bytes()[:100])
    again = dataset.load(seed=0, cache_dir=tmp_path)
    assert not dataset.loaded_from_cache
    np.testing.assert_array_equal(again.split.test_item, first.split.test_item)
    dataset.load(seed=0, cache_dir=tmp_path)
    assert dataset.loaded_from_cache
