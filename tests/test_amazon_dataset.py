"""The `amazon_reviews` dataset: 2018 and 2023 JSON lines, plain and gzip, k-core, clear errors."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marlrec import registry
from marlrec.data import RecData
from marlrec.datasets.amazon import AmazonReviewsDataset
from marlrec.registry import PluginError

# (user, product, rating, time in seconds), in file order; the last line repeats an earlier one.
REVIEWS = (
    ("u1", "p1", 5, 100),
    ("u1", "p2", 4, 200),
    ("u1", "p3", 3, 300),
    ("u2", "p2", 5, 110),
    ("u2", "p3", 2, 210),
    ("u2", "p1", 4, 310),
    ("u3", "p1", 1, 120),
    ("u3", "p4", 5, 220),
    ("u3", "p3", 4, 320),
    ("u1", "p2", 4, 200),
)
# p4 is reviewed but has no metadata; p9 has metadata but no review.
PRODUCTS = (
    ("p1", "Soap &amp; Co", ["<b>Gentle</b> soap."], ["Beauty", "Skin Care"], 1299.99),
    ("p2", "Brush", [], [], None),
    ("p3", "Comb", ["Wide teeth.", "Light."], ["Beauty"], 10.99),
    ("p9", "Never reviewed", [], ["Beauty"], 3.0),
)


def review_2018(user: str, item: str, rating: float, time: int) -> dict[str, Any]:
    return {
        "reviewerID": user,
        "asin": item,
        "overall": float(rating),
        "unixReviewTime": time,
        "reviewText": "Fine.",
    }


def review_2023(user: str, item: str, rating: float, time: int) -> dict[str, Any]:
    # The variant asin differs from the parent, which is what names the product.
    return {
        "user_id": user,
        "asin": f"{item}-red",
        "parent_asin": item,
        "rating": rating,
        "timestamp": time * 1000,
        "text": "Fine.",
    }


def product_2018(pid: str, title: str, desc: list[str], cats: list[str], price: Any) -> dict:
    text_price = "" if price is None else f"${price:,.2f}"
    return {"asin": pid, "title": title, "description": desc, "category": cats, "price": text_price}


def product_2023(pid: str, title: str, desc: list[str], cats: list[str], price: Any) -> dict:
    return {
        "parent_asin": pid,
        "title": title,
        "description": desc,
        "categories": cats,
        "price": price,
        "main_category": "All Beauty",
    }


def write_lines(path: Path, records: list[Any], *, compress: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_release(tmp_path: Path, year: int, *, compress: bool = False) -> tuple[Path, Path]:
    review, product = (review_2018, product_2018) if year == 2018 else (review_2023, product_2023)
    suffix = ".json.gz" if compress else ".jsonl"
    reviews = write_lines(
        tmp_path / f"reviews{suffix}", [review(*r) for r in REVIEWS], compress=compress
    )
    meta = write_lines(
        tmp_path / f"meta{suffix}", [product(*p) for p in PRODUCTS], compress=compress
    )
    return reviews, meta


def config(reviews: Path, meta: Path | None = None, **options: Any) -> AmazonReviewsDataset.Config:
    options.setdefault("k_core", 0)
    return AmazonReviewsDataset.Config(
        reviews=str(reviews), meta=str(meta) if meta else "", **options
    )


def load(c: AmazonReviewsDataset.Config, cache: Path) -> tuple[RecData, AmazonReviewsDataset]:
    dataset = AmazonReviewsDataset(c)
    return dataset.load(seed=0, cache_dir=cache), dataset


# --- both releases -------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("year", [2018, 2023])
def test_reads_both_releases_plain_and_gzip(tmp_path: Path, year: int, compress: bool) -> None:
    reviews, meta = write_release(tmp_path, year, compress=compress)
    data, _ = load(config(reviews, meta), tmp_path / "cache")
    assert (data.n_users, data.n_items) == (3, 4)
    np.testing.assert_array_equal(data.item_attributes["raw_id"], ["p1", "p2", "p3", "p4"])
    inter = data.interactions
    # The repeated review counts once; times are seconds in both releases.
    np.testing.assert_array_equal(inter.user, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(inter.item, [0, 1, 2, 1, 2, 0, 0, 3, 2])
    np.testing.assert_array_equal(inter.time, [100, 200, 300, 110, 210, 310, 120, 220, 320])
    np.testing.assert_array_equal(inter.value, [5, 4, 3, 5, 2, 4, 1, 5, 4])
    assert data.item_text == [
        "Soap & Co. Categories: Beauty, Skin Care. Gentle soap.",
        "Brush.",
        "Comb. Categories: Beauty. Wide teeth. Light.",
        "item p4",
    ]
    np.testing.assert_array_equal(data.item_attributes["price"], [1299.99, np.nan, 10.99, np.nan])
    np.testing.assert_array_equal(data.split.test_item, [2, 0, 2])
    np.testing.assert_array_equal(data.split.valid_item, [1, 2, 3])


def test_without_meta_items_are_their_ids(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2023)
    data, _ = load(config(reviews), tmp_path)
    assert data.item_text == ["item p1", "item p2", "item p3", "item p4"]
    assert np.isnan(data.item_attributes["price"]).all()


def test_forced_version_reads_the_2023_variant_asin_without_parent(tmp_path: Path) -> None:
    records = [review_2023(*r) for r in REVIEWS[:9]]
    for r in records:
        del r["parent_asin"]  # then the variant's asin names the product
    reviews = write_lines(tmp_path / "r.jsonl", records)
    data, _ = load(config(reviews, version=2023), tmp_path)
    assert data.item_attributes["raw_id"].tolist() == ["p1-red", "p2-red", "p3-red", "p4-red"]


def test_price_text_and_2014_category_paths(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2018)
    prices = ["$1,299.99", "$10.99 - $15.99", "", "12"]
    meta = write_lines(
        tmp_path / "meta.jsonl",
        [
            {
                "asin": f"p{i + 1}",
                "title": f"T{i + 1}",
                "price": p,
                "categories": [["A", "B"], ["A"]],
            }
            for i, p in enumerate(prices)
        ],
    )
    data, _ = load(config(reviews, meta), tmp_path)
    np.testing.assert_array_equal(data.item_attributes["price"], [1299.99, np.nan, np.nan, 12.0])
    assert data.item_text[0] == "T1. Categories: A, B."


def test_text_template(tmp_path: Path) -> None:
    reviews, meta = write_release(tmp_path, 2023)
    data, _ = load(config(reviews, meta, text_template="{title} [{categories}]"), tmp_path)
    assert data.item_text[:3] == ["Soap & Co [Beauty, Skin Care]", "Brush []", "Comb [Beauty]"]


def test_k_core_is_iterated_to_a_fixed_point(tmp_path: Path) -> None:
    # k=2: i4 goes (1 review), then uD (1 left), then i3 (1 left), then uC (1 left); one pass
    # would stop after i4 and keep uC and uD.
    pairs = [("uA", "i1"), ("uA", "i2"), ("uA", "i5"), ("uB", "i1"), ("uB", "i2"), ("uB", "i5")]
    pairs += [("uC", "i2"), ("uC", "i3"), ("uD", "i3"), ("uD", "i4")]
    records = [review_2018(u, i, 5, t) for t, (u, i) in enumerate(pairs)]
    reviews = write_lines(tmp_path / "r.jsonl", records)
    data, _ = load(config(reviews, k_core=2), tmp_path)
    assert data.n_users == 2 and data.item_attributes["raw_id"].tolist() == ["i1", "i2", "i5"]
    assert len(data.interactions) == 6
    # On the fixture: p4 has one review; k=3 drops p2 and p4, then every user is left with 2.
    fixture, _ = write_release(tmp_path, 2018)
    with pytest.raises(PluginError, match=re.escape("k-core filtering (k_core=3) left no")):
        load(config(fixture, k_core=3), tmp_path)


def test_rating_threshold(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2018)
    data, _ = load(config(reviews, rating_threshold=3.0), tmp_path)
    assert (data.interactions.value >= 3).all() and len(data.interactions) == 7


def test_identical_duplicate_products_count_once_and_first_can_win(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2018)
    records = [product_2018(*p) for p in PRODUCTS]
    meta = write_lines(tmp_path / "meta.jsonl", [*records, records[0]])
    data, _ = load(config(reviews, meta), tmp_path)
    assert data.item_text[0].startswith("Soap & Co.")
    changed = {**records[0], "title": "Other"}
    write_lines(meta, [*records, changed])
    data, _ = load(config(reviews, meta, duplicate_meta="first"), tmp_path)
    assert data.item_text[0].startswith("Soap & Co.")


def test_second_load_is_served_from_the_cache(tmp_path: Path) -> None:
    reviews, meta = write_release(tmp_path, 2023, compress=True)
    first, dataset = load(config(reviews, meta), tmp_path / "cache")
    assert not dataset.loaded_from_cache
    again, dataset = load(config(reviews, meta), tmp_path / "cache")
    assert dataset.loaded_from_cache and dataset.cache_file is not None
    assert dataset.cache_file.name.startswith("amazon_reviews-")
    assert again.item_text == first.item_text
    np.testing.assert_array_equal(again.item_attributes["price"], first.item_attributes["price"])
    np.testing.assert_array_equal(again.item_attributes["raw_id"], first.item_attributes["raw_id"])
    np.testing.assert_array_equal(again.split.test_item, first.split.test_item)


def test_temporal_split(tmp_path: Path) -> None:
    reviews, meta = write_release(tmp_path, 2018)
    data, _ = load(config(reviews, meta, split="temporal", split_ratios=[0.6, 0.2, 0.2]), tmp_path)
    # 9 reviews: times from the 6th smallest (220) on are valid, from the 8th (310) on test.
    assert [h.tolist() for h in data.split.held_out("valid")] == [[2], [], [3]]
    assert [h.tolist() for h in data.split.held_out("test")] == [[], [0], [2]]
    assert data.history_before(2, "test").tolist() == [0, 3]


def test_registered_as_an_entry_point(tmp_path: Path) -> None:
    assert registry.load("data", "amazon_reviews") is AmazonReviewsDataset
    reviews, _ = write_release(tmp_path, 2018)
    section = {"name": "amazon_reviews", "reviews": str(reviews), "k_core": 0, "version": 2018}
    assert registry.create("data", section).load(seed=0, cache_dir=tmp_path).n_items == 4


# --- bad input -----------------------------------------------------------------------------


def error(c: AmazonReviewsDataset.Config, tmp_path: Path) -> str:
    with pytest.raises(PluginError) as err:
        load(c, tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and message.startswith("dataset 'amazon_reviews': ")
    # Nothing is cached from a load that failed.
    assert not list((tmp_path / "cache").glob("**/*.npz"))
    return message


def at(path: Path, line: int) -> str:
    return f"{path}, line {line}: "


def replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("line", "text", "what"),
    [
        (3, '{"reviewerID": "u1", "asin": "p3",', "not valid JSON: Expecting property name"),
        (2, '["u1", "p2", 4, 200]', "expected a JSON object, found list"),
        (
            4,
            '{"reviewerID": "u2", "asin": "p2", "unixReviewTime": 110}',
            "no 'overall' key (a 2018 review has reviewerID, asin, overall, unixReviewTime)",
        ),
        (
            5,
            '{"reviewerID": "u2", "asin": "p3", "overall": "two", "unixReviewTime": 210}',
            "overall 'two' is not a number",
        ),
        (
            6,
            '{"reviewerID": null, "asin": "p1", "overall": 4, "unixReviewTime": 310}',
            "reviewerID None is not an id",
        ),
    ],
)
def test_malformed_review_line(tmp_path: Path, line: int, text: str, what: str) -> None:
    reviews, _ = write_release(tmp_path, 2018)
    replace_line(reviews, line, text)
    assert at(reviews, line) + what in error(config(reviews), tmp_path)


def test_bad_json_names_the_column(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2023)
    replace_line(reviews, 2, '{"user_id": "u1" "parent_asin": "p2"}')
    message = error(config(reviews), tmp_path)
    assert at(reviews, 2) + "not valid JSON: Expecting ',' delimiter at column 18" in message


def test_unknown_release(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "r.jsonl", [{"user": "u1", "item": "p1"}])
    message = error(config(reviews), tmp_path)
    assert at(reviews, 1) + "neither a 2018 nor a 2023 review" in message
    assert "found keys: user, item" in message


def test_wrong_forced_version_names_the_missing_key(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2018)
    assert at(reviews, 1) + "no 'user_id' key" in error(config(reviews, version=2023), tmp_path)


def test_meta_errors_name_line_and_key(tmp_path: Path) -> None:
    reviews, meta = write_release(tmp_path, 2023)
    replace_line(meta, 2, '{"asin": "p2", "title": "Brush"}')
    message = error(config(reviews, meta), tmp_path)
    assert at(meta, 2) + "no 'parent_asin' key (a 2023 product record has one)" in message
    replace_line(meta, 2, '{"parent_asin": "p2", "description": {"a": 1}}')
    assert at(meta, 2) + "description must be text or a list" in error(
        config(reviews, meta), tmp_path
    )


def test_duplicate_product_with_other_details(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2018)
    records = [product_2018(*p) for p in PRODUCTS]
    meta = write_lines(tmp_path / "meta.jsonl", [*records, {**records[2], "price": "$1.00"}])
    message = error(config(reviews, meta), tmp_path)
    assert at(meta, 5) + "duplicate asin 'p3' (first on line 3) with different details" in message
    assert "duplicate_meta=first" in message


def test_truncated_gzip(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2018, compress=True)
    reviews.write_bytes(reviews.read_bytes()[:-30])
    message = error(config(reviews), tmp_path)
    assert f"{reviews}, line " in message and "the gzip stream ends early" in message


def test_invalid_utf8(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2018)
    with reviews.open("ab") as f:
        f.write(b'{"reviewerID": "caf\xe9"}\n')
    assert at(reviews, 11) + "not valid UTF-8 text" in error(config(reviews), tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2018)
    message = error(config(tmp_path / "absent.jsonl"), tmp_path)
    assert f"reviews '{tmp_path / 'absent.jsonl'}' is not a file" in message
    message = error(config(reviews, tmp_path / "nometa.jsonl"), tmp_path)
    assert f"meta '{tmp_path / 'nometa.jsonl'}' is not a file" in message


def test_empty_results(tmp_path: Path) -> None:
    reviews, _ = write_release(tmp_path, 2018)
    message = error(config(reviews, k_core=5), tmp_path)
    assert f"{reviews}: k-core filtering (k_core=5) left no interactions" in message
    message = error(config(reviews, rating_threshold=6.0), tmp_path)
    assert f"{reviews}: no rating is >= rating_threshold=6.0" in message
    (tmp_path / "empty.jsonl").write_text("\n")
    assert f"{tmp_path / 'empty.jsonl'}: has no reviews" in error(
        config(tmp_path / "empty.jsonl"), tmp_path
    )


def test_too_few_reviews_for_leave_one_out(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "r.jsonl", [review_2018(*r) for r in REVIEWS[:2]])
    message = error(config(reviews), tmp_path)
    assert f"{reviews}: no user has the 3 interactions that leave-one-out needs" in message


@pytest.mark.parametrize(
    ("options", "what"),
    [
        ({}, "set data.reviews=<reviews JSON-lines file>"),
        ({"reviews": "x", "k_core": -1}, "k_core must be >= 0"),
        ({"reviews": "x", "version": 2020}, "version must be auto, 2018 or 2023"),
        ({"reviews": "x", "text_template": "{brand}"}, "unknown field {brand}"),
        ({"reviews": "x", "split_ratios": [0.5, 0.5]}, "split_ratios must be three positive"),
    ],
)
def test_bad_config(options: dict[str, Any], what: str) -> None:
    with pytest.raises(PluginError, match=re.escape(what)) as err:
        AmazonReviewsDataset(AmazonReviewsDataset.Config(**options))
    assert "\n" not in str(err.value)


def test_price_is_nan_not_zero_when_unknown(tmp_path: Path) -> None:
    reviews, meta = write_release(tmp_path, 2023)
    data, _ = load(config(reviews, meta), tmp_path)
    price = data.item_attributes["price"]
    assert price.dtype == np.float64 and math.isnan(price[1]) and price[2] == 10.99
