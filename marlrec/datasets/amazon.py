"""`amazon_reviews`: the Amazon Reviews 2018 and 2023 releases (McAuley lab), JSON lines.

`reviews` holds one review per line, `meta` (optional) one product per line; either may be
gzip-compressed (recognised by its first bytes, not its name). The release is recognised from
the first review's keys, or set with `version`:

- 2018: reviews `reviewerID`, `asin`, `overall`, `unixReviewTime` (seconds); products `asin`,
  `title`, `description` (a list), `category` (a list; older dumps: `categories`, a list of
  lists) and `price` as text ("$12.99").
- 2023: reviews `user_id`, `parent_asin` (else `asin`), `rating`, `timestamp` (milliseconds);
  products `parent_asin`, `title`, `description` (a list), `categories` and `price` (a number
  or null).

Times become seconds. Reviews repeated with the same user, product and time (the 2018 dumps
hold such copies) count once. Ratings below `rating_threshold` are dropped, then users and
products with fewer than `k_core` reviews, repeatedly until none is left (a k-core). A reviewed
product missing from `meta` is kept, described by its id, with an unknown price. Product records
repeated in `meta` with the same text and price count once; differing ones are an error unless
`duplicate_meta=first`.

The item text fills `text_template` from {title}, {description} and {categories}, with HTML
tags and entities removed and labels left empty dropped. `item_attributes` holds `raw_id` (the
product id) and `price` (float64, NaN when unknown), which revenue-like rewards can read.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import io
import json
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

from marlrec.data import SplitMethod
from marlrec.datasets.files import Source
from marlrec.datasets.filters import Filters, RawInteractions, apply_filters, densify
from marlrec.datasets.splitting import Parsed
from marlrec.datasets.tabular import FileDataset
from marlrec.datasets.text import render, template_fields
from marlrec.registry import PluginError

WHERE = "dataset 'amazon_reviews'"
TEXT_FIELDS = ("title", "description", "categories")
Version = Literal["auto", 2018, 2023]


@dataclass(frozen=True)
class Release:
    """The keys one release uses."""

    year: int
    user: str
    items: tuple[str, ...]  # the first key present names the product
    rating: str
    time: str
    seconds_per_tick: float
    meta_id: str
    categories: tuple[str, ...]

    def describe(self) -> str:
        return f"a {self.year} review has {self.user}, {self.items[0]}, {self.rating}, {self.time}"


RELEASES = {
    2018: Release(
        2018,
        "reviewerID",
        ("asin",),
        "overall",
        "unixReviewTime",
        1.0,
        "asin",
        ("category", "categories"),
    ),
    2023: Release(
        2023,
        "user_id",
        ("parent_asin", "asin"),
        "rating",
        "timestamp",
        1e-3,
        "parent_asin",
        ("categories",),
    ),
}


@dataclass(frozen=True, kw_only=True)
class Product:
    """What the item text and attributes need from one metadata record."""

    title: str
    description: str
    categories: str
    price: float


class AmazonReviewsDataset(FileDataset):
    """Amazon product reviews as interactions; products described by title, text and categories."""

    @dataclass(kw_only=True)
    class Config:
        reviews: str = ""
        """The reviews file: JSON lines, plain or gzip-compressed."""
        meta: str = ""
        """The product metadata file (JSON lines, plain or gzip); empty: items are their ids."""
        version: Version = "auto"
        """2018 or 2023; auto recognises the release from the first review's keys."""
        k_core: int = 5
        """Drop users and products with fewer reviews, repeatedly until stable (0 keeps all)."""
        rating_threshold: float | None = None
        """Keep only ratings >= this; None keeps every review as an interaction."""
        text_template: str = "{title}. Categories: {categories}. {description}"
        """Item text from {title}, {description} and {categories}."""
        duplicate_meta: Literal["error", "first"] = "error"
        """A product listed twice in meta with different details: an error, or keep the first."""
        split: SplitMethod = "loo"
        """loo (each user's last item is test, the one before valid), temporal or random."""
        split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
        """Train, valid and test fractions of the temporal and random splits (not loo)."""

    config: Config

    def __init__(self, config: Config) -> None:
        _validate(config)
        super().__init__(config)

    def sources(self, cache_dir: Path) -> list[Path]:
        c = self.config
        files = [_existing(c.reviews, "reviews")]
        if c.meta:
            files.append(_existing(c.meta, "meta"))
        return files

    def parse(self, sources: list[Path]) -> Parsed:
        c = self.config
        raw, release = read_reviews(Source(path=sources[0], where=WHERE), c.version)
        raw = apply_filters(raw, self.filters)
        interactions, user_ids, item_ids = densify(raw)
        products: dict[str, Product] = {}
        if len(sources) > 1:
            meta = Source(path=sources[1], where=WHERE)
            products = read_meta(meta, release, set(item_ids.tolist()), c.duplicate_meta)
        return Parsed(
            name=self.name,
            interactions=interactions,
            n_users=len(user_ids),
            user_ids=user_ids,
            item_text=_texts(item_ids, products, c.text_template),
            item_attributes={
                "raw_id": item_ids,
                "price": np.array(
                    [_price_of(products.get(i)) for i in item_ids.tolist()], dtype=np.float64
                ),
            },
            source=raw.table,
        )

    @property
    def filters(self) -> Filters:
        c = self.config
        return Filters(
            min_user_interactions=c.k_core,
            min_item_interactions=c.k_core,
            rating_threshold=c.rating_threshold,
            k_core_setting=f"k_core={c.k_core}",
        )


def _validate(c: AmazonReviewsDataset.Config) -> None:
    if not c.reviews:
        raise PluginError(f"{WHERE}: set data.reviews=<reviews JSON-lines file>")
    if c.version not in ("auto", *RELEASES):
        raise PluginError(f"{WHERE}: version must be auto, 2018 or 2023, got {c.version!r}")
    if c.k_core < 0:
        raise PluginError(f"{WHERE}: k_core must be >= 0, got {c.k_core}")
    if c.duplicate_meta not in ("error", "first"):
        raise PluginError(f"{WHERE}: duplicate_meta must be error or first")
    template_fields(c.text_template, TEXT_FIELDS, WHERE)


def _existing(path: str, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise PluginError(f"{WHERE}: {key} {str(p)!r} is not a file")
    return p


# --- JSON lines ------------------------------------------------------------------------------


def json_lines(source: Source) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line raises naming its number."""
    number = 0
    try:
        with _open_binary(source.path) as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise source.error("not valid UTF-8 text", number) from None
                if line.strip():
                    yield number, _decode(source, line, number)
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a cut-off download ends in EOFError.
        what = "the gzip stream ends early" if isinstance(exc, EOFError) else str(exc)
        raise source.error(f"cannot be read: {what}", number + 1) from None


def _open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it starts with the gzip magic number."""
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    # GzipFile's own readline is slow; a buffered reader over it splits lines in C.
    return io.BufferedReader(gzip.open(path, "rb")) if compressed else open(path, "rb")


def _decode(source: Source, line: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise source.error(f"not valid JSON: {exc.msg} at column {exc.colno}", number) from None
    if not isinstance(record, dict):
        raise source.error(f"expected a JSON object, found {type(record).__name__}", number)
    return record


# --- reviews ---------------------------------------------------------------------------------


def read_reviews(source: Source, version: Version) -> tuple[RawInteractions, Release]:
    """Every review as an interaction, in file order, copies dropped; and the release read."""
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    times: list[float] = []
    release: Release | None = None if version == "auto" else RELEASES[int(version)]
    for number, record in json_lines(source):
        if release is None:
            release = _recognise(source, record, number)
        user, item, rating, time = _review(source, release, record, number)
        users.append(user)
        items.append(item)
        ratings.append(rating)
        times.append(time)
    if release is None:
        raise source.error("has no reviews")
    frame = pd.DataFrame({"user": users, "item": items, "time": times})
    first = ~frame.duplicated(keep="first").to_numpy()
    raw = RawInteractions(
        table=source,
        user=np.asarray(users, dtype=object),
        item=np.asarray(items, dtype=object),
        time=np.asarray(times, dtype=np.float64) * release.seconds_per_tick,
        value=np.asarray(ratings, dtype=np.float32),
    )
    return raw.subset(first), release


def _recognise(source: Source, record: dict[str, Any], number: int) -> Release:
    for release in RELEASES.values():
        if release.user in record:
            return release
    raise source.error(
        f"neither a 2018 nor a 2023 review ({RELEASES[2018].describe()}; "
        f"{RELEASES[2023].describe()}); found keys: {', '.join(record)}",
        number,
    )


def _review(
    source: Source, release: Release, record: dict[str, Any], number: int
) -> tuple[str, str, float, float]:
    item_key = release.items[0]
    if item_key not in record:
        item_key = next((k for k in release.items if k in record), item_key)
    values = [record.get(k) for k in (release.user, item_key, release.rating, release.time)]
    user, item, rating, time = values
    # The common case in two type tests per field; only a bad record pays for the messages.
    if (
        type(user) is str
        and user
        and type(item) is str
        and item
        and type(rating) in _NUMBERS
        and type(time) in _NUMBERS
        and math.isfinite(rating)
        and math.isfinite(time)
    ):
        return user, item, float(rating), float(time)
    for key in (release.user, item_key, release.rating, release.time):
        if key not in record:
            raise source.error(f"no '{key}' key ({release.describe()})", number)
    for key, value in ((release.user, user), (item_key, item)):
        if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
            raise source.error(f"{key} {value!r} is not an id", number)
    for key, value in ((release.rating, rating), (release.time, time)):
        if not _is_number(value):
            raise source.error(f"{key} {value!r} is not a number", number)
    return str(user), str(item), float(rating), float(time)


_NUMBERS = (int, float)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- metadata --------------------------------------------------------------------------------


def read_meta(
    source: Source, release: Release, wanted: set[str], duplicates: Literal["error", "first"]
) -> dict[str, Product]:
    """The products in `wanted` by id; every line is still checked."""
    products: dict[str, Product] = {}
    first_line: dict[str, int] = {}
    for number, record in json_lines(source):
        key = release.meta_id
        if key not in record:
            raise source.error(f"no '{key}' key (a {release.year} product record has one)", number)
        pid = record[key]
        if not isinstance(pid, str | int) or isinstance(pid, bool) or pid == "":
            raise source.error(f"{key} {pid!r} is not an id", number)
        pid = str(pid)
        if pid not in wanted:
            continue
        product = _product(source, release, record, number)
        if pid in products:
            if products[pid] != product and duplicates == "error":
                raise source.error(
                    f"duplicate {key} {pid!r} (first on line {first_line[pid]}) with different "
                    "details; set data.duplicate_meta=first to keep the first",
                    number,
                )
            continue
        products[pid] = product
        first_line[pid] = number
    return products


def _product(source: Source, release: Release, record: dict[str, Any], number: int) -> Product:
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise source.error(f"title is {type(title).__name__}, not text", number)
    categories = next((record[k] for k in release.categories if k in record), [])
    return Product(
        title=_clean(title or ""),
        description=_clean(" ".join(_strings(source, "description", record, number))),
        categories=", ".join(dict.fromkeys(_flat(source, categories, number))),
        price=_price(record.get("price")),
    )


def _strings(source: Source, key: str, record: dict[str, Any], number: int) -> list[str]:
    """A text or a list of texts (null: none)."""
    value = record.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise source.error(f"{key} must be text or a list of texts", number)


def _flat(source: Source, categories: Any, number: int) -> Iterator[str]:
    """Category names from a list, or the 2014 dumps' list of category paths."""
    if categories is None:
        return
    if not isinstance(categories, list):
        raise source.error("categories must be a list", number)
    for entry in categories:
        if isinstance(entry, list):
            yield from _flat(source, entry, number)
        elif isinstance(entry, str):
            name = _clean(entry)
            if name:
                yield name
        else:
            raise source.error(f"category {entry!r} is not text", number)


_TAG = re.compile(r"<[^>]*>")


def _clean(text: str) -> str:
    """Text without HTML tags or entities, on one line."""
    return " ".join(html.unescape(_TAG.sub(" ", text)).split())


def _price(value: Any) -> float:
    """A number, or text such as "$1,299.99"; anything else (ranges, "", null) is unknown."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            price = float(value.strip().removeprefix("$").replace(",", ""))
            if math.isfinite(price):
                return price
    return math.nan


def _price_of(product: Product | None) -> float:
    return math.nan if product is None else product.price


# --- item text -------------------------------------------------------------------------------

_EMPTY_LABEL = re.compile(r"\b[A-Z][a-z]+:\s*(?=[.,;]|$)")
_REPEATED_STOP = re.compile(r"([.!?])(?:\s+\.)+|(?<!\.)([!?.])\.(?!\.)")
_LEADING_STOPS = re.compile(r"^[\s.,;:]+")


def _texts(item_ids: np.ndarray, products: dict[str, Product], template: str) -> list[str]:
    ids = item_ids.tolist()
    found = [products.get(i) for i in ids]
    columns = {
        name: [getattr(p, name) if p is not None else "" for p in found] for name in TEXT_FIELDS
    }
    texts = render(template, columns, len(ids))
    return [_tidy(text) or f"item {i}" for text, i in zip(texts, ids, strict=True)]


def _tidy(text: str) -> str:
    """Drop what an empty field leaves: a label such as "Categories: ." without its value,
    doubled full stops and leading ones."""
    text = _EMPTY_LABEL.sub("", text)
    text = _REPEATED_STOP.sub(lambda m: m.group(1) or m.group(2), text)
    return " ".join(_LEADING_STOPS.sub("", text).split())
