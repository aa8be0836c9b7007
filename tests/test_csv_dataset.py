"""The generic `csv` dataset: CSV or Parquet, configurable columns, an item-text file, errors."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marlrec import registry
from marlrec.data import RecData
from marlrec.datasets.csv import CsvDataset
from marlrec.registry import PluginError

# String user ids, numeric item ids, ISO-8601 times; "bob" rates items 20 and 10 at one time.
INTERACTIONS = """\
when,who,what,stars,extra
2024-01-03T10:00:00Z,bob,30,4,x
2024-01-01,alice,10,5,x
2024-01-02T00:00:00+00:00,alice,20,3,x
2024-01-02,bob,20,2,x
2024-01-02,bob,10,5,x
2024-01-05,alice,30,1,x
2024-01-01,bob,40,3,x
"""
ITEMS = """\
id,title,plot,genre
10,Ten,A story about ten.,Drama
20,Twenty,,Comedy
30,Thirty,"Thirty, with a comma.",Drama
40,Forty,Four tens.,
50,Fifty,Never rated.,Drama
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def config(tmp_path: Path, **options: object) -> CsvDataset.Config:
    base: dict[str, object] = {
        "path": write(tmp_path, "interactions.csv", INTERACTIONS),
        "user_col": "who",
        "item_col": "what",
        "time_col": "when",
        "value_col": "stars",
        "items_path": write(tmp_path, "items.csv", ITEMS),
        "item_id_col": "id",
    }
    return CsvDataset.Config(**{**base, **options})  # type: ignore[arg-type]


def load(c: CsvDataset.Config, cache: Path) -> tuple[RecData, CsvDataset]:
    dataset = CsvDataset(c)
    return dataset.load(seed=0, cache_dir=cache), dataset


def as_parquet(csv_path: str, name: str) -> str:
    """The same table as Parquet (empty cells become nulls), beside the CSV file."""
    path = Path(csv_path).with_name(name)
    pd.read_csv(csv_path).to_parquet(path)
    return str(path)


def parquet(tmp_path: Path, name: str, **columns: list[object]) -> str:
    path = tmp_path / name
    pd.DataFrame(columns).to_parquet(path)
    return str(path)


def assert_same_data(a: RecData, b: RecData) -> None:
    assert (a.name, a.n_users, a.n_items) == (b.name, b.n_users, b.n_items)
    assert a.item_text == b.item_text
    for field_name in ("user", "item", "time", "value"):
        np.testing.assert_array_equal(
            getattr(a.interactions, field_name), getattr(b.interactions, field_name)
        )
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a.split, part).item, getattr(b.split, part).item)
    np.testing.assert_array_equal(a.split.test_item, b.split.test_item)
    np.testing.assert_array_equal(a.item_attributes["raw_id"], b.item_attributes["raw_id"])
    assert a.item_attributes["raw_id"].dtype == b.item_attributes["raw_id"].dtype


def test_columns_times_and_texts(tmp_path: Path) -> None:
    data, _ = load(config(tmp_path), tmp_path)
    assert (data.name, data.n_users, data.n_items) == ("csv", 2, 4)
    np.testing.assert_array_equal(data.item_attributes["raw_id"], [10, 20, 30, 40])
    inter = data.interactions
    # alice (user 0): 10, 20, 30 by date; bob (user 1): 40, then 20 and 10 tied in file order, 30.
    np.testing.assert_array_equal(inter.user, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(inter.item, [0, 1, 2, 3, 1, 0, 2])
    np.testing.assert_array_equal(inter.value, [5, 3, 1, 3, 2, 5, 4])
    assert inter.time[0] == 1704067200.0  # 2024-01-01T00:00:00Z
    np.testing.assert_array_equal(data.split.test_item, [2, 2])
    np.testing.assert_array_equal(data.split.valid_item, [1, 0])
    assert data.item_text == [
        "Ten. A story about ten. Drama",  # no second period after one that ends a cell
        "Twenty. Comedy",
        "Thirty. Thirty, with a comma. Drama",
        "Forty. Four tens.",
    ]


def test_text_columns_and_template(tmp_path: Path) -> None:
    c = config(tmp_path, text_cols=["title", "genre"], text_template="{title} ({genre})")
    data, _ = load(c, tmp_path)
    assert data.item_text == ["Ten (Drama)", "Twenty (Comedy)", "Thirty (Drama)", "Forty"]


def test_file_order_and_implicit_values_without_time_and_value(tmp_path: Path) -> None:
    data, _ = load(config(tmp_path, time_col="", value_col="", items_path=""), tmp_path)
    np.testing.assert_array_equal(data.interactions.item, [0, 1, 2, 2, 1, 0, 3])
    assert (data.interactions.value == 1.0).all()
    assert data.item_text == ["item 10", "item 20", "item 30", "item 40"]
    # bob's last row in the file is item 40.
    assert data.split.test_item[1] == 3


def test_string_item_ids_and_other_separators(tmp_path: Path) -> None:
    (tmp_path / "i.tsv").write_text("u\ti\tt\nu1\tb\t1\nu1\ta\t2\nu1\tc\t3\nu2\ta\t1\n")
    (tmp_path / "items.tsv").write_text("i\tname\na\tAy\nb\tBee\nc\tSee\n")
    c = CsvDataset.Config(
        path=str(tmp_path / "i.tsv"),
        sep="\t",
        user_col="u",
        item_col="i",
        time_col="t",
        items_path=str(tmp_path / "items.tsv"),
        item_id_col="i",
    )
    data, _ = load(c, tmp_path)
    np.testing.assert_array_equal(data.item_attributes["raw_id"], ["a", "b", "c"])
    assert data.item_text == ["Ay", "Bee", "See"]
    again, dataset = load(c, tmp_path)
    assert dataset.loaded_from_cache
    np.testing.assert_array_equal(again.item_attributes["raw_id"], ["a", "b", "c"])
    # A command-line data.sep='\t' reaches the plugin as backslash-t.
    assert load(dataclasses.replace(c, sep="\\t"), tmp_path / "c2")[0].item_text == data.item_text
    (tmp_path / "d.dat").write_text("u::i::v\n1::7::5\n1::8::4\n1::9::3\n")
    plain = CsvDataset.Config(path=str(tmp_path / "d.dat"), sep="::", user_col="u", item_col="i")
    assert load(plain, tmp_path)[0].item_text == ["item 7", "item 8", "item 9"]


def test_numeric_and_text_ids_are_matched_as_text(tmp_path: Path) -> None:
    items = "id,title\n10,Ten\nx9,Other\n20,Twenty\n30,Thirty\n40,Forty\n"
    data, _ = load(config(tmp_path, items_path=write(tmp_path, "mixed.csv", items)), tmp_path)
    assert data.item_text == ["Ten", "Twenty", "Thirty", "Forty"]
    np.testing.assert_array_equal(data.item_attributes["raw_id"], ["10", "20", "30", "40"])


def test_filters(tmp_path: Path) -> None:
    data, _ = load(config(tmp_path, rating_threshold=3.0), tmp_path)
    assert (data.interactions.value >= 3).all() and len(data.interactions) == 5
    data, _ = load(config(tmp_path, min_item_interactions=2), tmp_path)
    np.testing.assert_array_equal(data.item_attributes["raw_id"], [10, 20, 30])


def test_second_load_hits_the_cache(tmp_path: Path) -> None:
    c = config(tmp_path)
    first, dataset = load(c, tmp_path / "cache")
    assert not dataset.loaded_from_cache
    again, dataset = load(c, tmp_path / "cache")
    assert dataset.loaded_from_cache and dataset.cache_file is not None
    assert dataset.cache_file.name.startswith("csv-")
    assert again.item_text == first.item_text
    np.testing.assert_array_equal(again.interactions.item, first.interactions.item)
    np.testing.assert_array_equal(again.split.test_item, first.split.test_item)


# --- Parquet -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interactions", "items"),
    [("interactions.parquet", "items.pq"), ("interactions.parquet", ""), ("", "items.parquet")],
)
def test_parquet_gives_the_same_data_as_csv(tmp_path: Path, interactions: str, items: str) -> None:
    text = config(tmp_path)
    expected, _ = load(text, tmp_path / "text")
    c = dataclasses.replace(
        text,
        path=as_parquet(text.path, interactions) if interactions else text.path,
        items_path=as_parquet(text.items_path, items) if items else text.items_path,
        sep=";" if interactions and items else ",",  # a text-file option Parquet ignores
    )
    data, dataset = load(c, tmp_path / "parquet")
    assert not dataset.loaded_from_cache
    assert_same_data(data, expected)
    again, dataset = load(c, tmp_path / "parquet")
    assert dataset.loaded_from_cache
    assert_same_data(again, expected)


def test_parquet_found_by_its_magic_bytes(tmp_path: Path) -> None:
    text = config(tmp_path)
    expected, _ = load(text, tmp_path / "text")
    path = Path(as_parquet(text.path, "interactions.parquet")).rename(tmp_path / "interactions.dat")
    data, _ = load(dataclasses.replace(text, path=str(path)), tmp_path / "parquet")
    assert_same_data(data, expected)


def test_parquet_types_timestamps_lists_and_an_index(tmp_path: Path) -> None:
    times = pd.to_datetime(["2024-01-02", "2024-01-01", "2024-01-03"] * 2).tz_localize("UTC")
    path = parquet(
        tmp_path,
        "i.parquet",
        user=["u1", "u1", "u1", "u2", "u2", "u2"],
        item=["b", "a", "c", "c", "b", "a"],
        at=list(times),
    )
    items = pd.DataFrame(
        {
            "title": ["Ay", "Bee", "See"],
            "year": pd.array([1999, None, 2001], dtype="Int64"),  # 1999, not 1999.0
            "genres": [["x", "y"], [], None],
        },
        index=pd.Index(["a", "b", "c"], name="iid"),  # written as the index, read as a column
    )
    items.to_parquet(tmp_path / "items.parquet")
    c = CsvDataset.Config(
        path=path,
        user_col="user",
        item_col="item",
        time_col="at",
        items_path=str(tmp_path / "items.parquet"),
        item_id_col="iid",
    )
    data, _ = load(c, tmp_path)
    np.testing.assert_array_equal(data.item_attributes["raw_id"], ["a", "b", "c"])
    assert data.item_text == ["Ay. 1999. x, y", "Bee", "See. 2001"]
    assert data.interactions.time[0] == 1704067200.0  # 2024-01-01T00:00:00Z
    np.testing.assert_array_equal(data.interactions.item, [0, 1, 2, 1, 2, 0])


def test_registered_as_an_entry_point() -> None:
    assert registry.load("data", "csv") is CsvDataset


# --- errors --------------------------------------------------------------------------------


def error(c: CsvDataset.Config, tmp_path: Path) -> str:
    with pytest.raises(PluginError) as err:
        load(c, tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and message.startswith("dataset 'csv': ")
    assert not (tmp_path / "cache" / "datasets").exists()  # a failed load caches nothing
    return message


def test_missing_column(tmp_path: Path) -> None:
    c = config(tmp_path, user_col="user")
    message = error(c, tmp_path)
    assert f"{c.path}: no column 'user' (columns: when, who, what, stars, extra)" in message


def test_missing_text_column(tmp_path: Path) -> None:
    c = config(tmp_path, text_cols=["title", "summary"])
    assert f"{c.items_path}: no column 'summary'" in error(c, tmp_path)


def test_bad_time(tmp_path: Path) -> None:
    c = config(tmp_path)
    Path(c.path).write_text(INTERACTIONS + "someday,bob,10,1,x\n")
    message = error(c, tmp_path)
    assert f"{c.path}, line 9: when 'someday' is neither a number nor an ISO-8601 date" in message


def test_bad_value(tmp_path: Path) -> None:
    c = config(tmp_path)
    Path(c.path).write_text(INTERACTIONS.replace("bob,20,2", "bob,20,two"))
    assert f"{c.path}, line 5: stars 'two' is not a number" in error(c, tmp_path)


def test_empty_user(tmp_path: Path) -> None:
    c = config(tmp_path)
    Path(c.path).write_text(INTERACTIONS.replace(",alice,30,", ",,30,"))
    assert f"{c.path}, line 7: empty who" in error(c, tmp_path)


def test_item_absent_from_the_item_file(tmp_path: Path) -> None:
    c = config(tmp_path)
    Path(c.path).write_text(INTERACTIONS + "2024-02-01,carol,99,5,x\n")
    assert f"{c.path}, line 9: what 99 is not in items.csv" in error(c, tmp_path)


def test_duplicate_item_id(tmp_path: Path) -> None:
    c = config(tmp_path)
    Path(c.items_path).write_text(ITEMS + "20,Twenty again,,\n")
    message = error(c, tmp_path)
    assert f"{c.items_path}, line 7: duplicate id 20 (first on line 3)" in message


def test_nothing_left_after_filtering(tmp_path: Path) -> None:
    c = config(tmp_path, min_user_interactions=5)
    message = error(c, tmp_path)
    assert (
        f"{c.path}: k-core filtering (min_user_interactions=5, min_item_interactions=0)" in message
    )
    message = error(config(tmp_path, rating_threshold=9.0), tmp_path)
    assert f"{c.path}: no rating is >= rating_threshold=9.0" in message


def test_too_few_interactions_for_leave_one_out(tmp_path: Path) -> None:
    c = config(tmp_path, rating_threshold=4.0)  # leaves bob two ratings and alice one
    message = error(c, tmp_path)
    assert f"{c.path}: no user has the 3 interactions that leave-one-out needs" in message
    assert "most per user: 2" in message


def test_template_field_not_in_the_item_file(tmp_path: Path) -> None:
    c = config(tmp_path, text_template="{title}: {summary}")
    message = error(c, tmp_path)
    assert "items.csv" in message and "unknown field {summary}" in message


def test_missing_file(tmp_path: Path) -> None:
    c = config(tmp_path, items_path=str(tmp_path / "absent.csv"))
    assert f"items_path '{tmp_path / 'absent.csv'}' is not a file" in error(c, tmp_path)


# --- Parquet errors: the file, then the data row (from 1) where there is one ----------------


def parquet_config(tmp_path: Path, **options: object) -> CsvDataset.Config:
    text = config(tmp_path)
    return dataclasses.replace(
        text,
        path=as_parquet(text.path, "interactions.parquet"),
        items_path=as_parquet(text.items_path, "items.parquet"),
        **options,  # type: ignore[arg-type]
    )


def test_parquet_missing_column(tmp_path: Path) -> None:
    c = parquet_config(tmp_path, user_col="user")
    message = error(c, tmp_path)
    assert f"{c.path}: no column 'user' (columns: when, who, what, stars, extra)" in message
    c = parquet_config(tmp_path, text_cols=["title", "summary"])
    assert f"{c.items_path}: no column 'summary' (columns: id, title, plot, genre)" in error(
        c, tmp_path
    )


def damaged(path: Path) -> None:
    """Overwrite the first page header, which every reader must decode."""
    data = bytearray(path.read_bytes())
    data[4:40] = b"\xff" * 36
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "spoil",
    [
        lambda p: p.write_text("who,what\nbob,10\n"),  # text under a Parquet name
        lambda p: p.write_bytes(p.read_bytes()[:-30]),  # cut short: no footer
        lambda p: p.write_bytes(b""),
        damaged,  # a readable footer over broken data
    ],
    ids=["text", "truncated", "empty", "damaged"],
)
def test_unreadable_parquet_file(tmp_path: Path, spoil: Callable[[Path], object]) -> None:
    c = parquet_config(tmp_path)
    spoil(Path(c.items_path))
    assert f"{c.items_path}: not a readable Parquet file (" in error(c, tmp_path)


@pytest.mark.parametrize(
    ("column", "values", "what"),
    [
        ("who", ["bob", "alice", None, "bob"], ", row 3: who is null"),
        ("who", ["bob", "alice", "", "bob"], ", row 3: empty who"),
        ("what", [30, 10, 20, None], ", row 4: what is null"),
        ("when", ["2024-01-03", None, "2024-01-02", "2024-01-02"], ", row 2: when is null"),
        (
            "when",
            ["2024-01-03", "soon", "2024-01-02", "2024-01-02"],
            ", row 2: when 'soon' is neither a number nor an ISO-8601 date",
        ),
        ("stars", ["4", "5", "3", "two"], ", row 4: stars 'two' is not a number"),
        ("stars", [4.0, 5.0, None, 2.0], ", row 3: stars is null"),
        ("what", [30, 10, 99, 20], ", row 3: what 99 is not in items.csv"),
        (
            "what",
            [[30], [10], [20], [20]],
            ": column 'what' holds list<element: int64> values, not single values",
        ),
    ],
)
def test_bad_parquet_cell(tmp_path: Path, column: str, values: list[object], what: str) -> None:
    columns: dict[str, list[object]] = {
        "when": ["2024-01-03", "2024-01-01", "2024-01-02", "2024-01-02"],
        "who": ["bob", "alice", "alice", "bob"],
        "what": [30, 10, 20, 20],
        "stars": [4, 5, 3, 2],
    }
    c = config(tmp_path, path=parquet(tmp_path, "i.parquet", **{**columns, column: values}))
    assert f"{c.path}{what}" in error(c, tmp_path)


def test_parquet_item_file_ids(tmp_path: Path) -> None:
    ids = [10, 20, 30, 40, 20]
    items = parquet(tmp_path, "items.parquet", id=ids, title=["a", "b", "c", "d", "e"])
    assert f"{items}, row 5: duplicate id 20 (first on row 2)" in error(
        config(tmp_path, items_path=items), tmp_path
    )
    items = parquet(tmp_path, "items.parquet", id=[10, 20, None, 40], title=["a", "b", "c", "d"])
    assert f"{items}, row 3: id is null" in error(config(tmp_path, items_path=items), tmp_path)


@pytest.mark.parametrize(
    ("options", "what"),
    [
        ({}, "set data.path=<interactions CSV or Parquet file>"),
        ({"path": "x", "user_col": "a", "item_col": "a"}, "two different column names"),
        ({"path": "x", "rating_threshold": 3.0}, "rating_threshold needs value_col"),
        ({"path": "x", "text_template": "{a}"}, "text_template needs items_path"),
        ({"path": "x", "sep": ""}, "sep must not be empty"),
    ],
)
def test_bad_config(options: dict[str, object], what: str) -> None:
    with pytest.raises(PluginError, match=re.escape(what)):
        CsvDataset(CsvDataset.Config(**options))  # type: ignore[arg-type]
