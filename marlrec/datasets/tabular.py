"""Shared machinery of the file-based dataset plugins (`movielens`, `csv`, `amazon_reviews`).

Reading delimited text: pandas' C parser with explicit dtypes does the work. Only when it fails,
or leaves a required field empty, is the file scanned again record by record to name the exact line
and what is wrong with it; that slow path never runs on a good file.

Reading Parquet (`ParquetTable`, chosen by `is_parquet`): `pandas.read_parquet` loads only the
named columns, which are then checked and brought to the types the text path yields. Parquet has
no lines, so messages name the data row instead, counted from 1.

Then: filtering (rating threshold, iterated k-core), remapping raw ids to dense ids ordered by raw
id, a stable (user, time) sort that keeps file order among equal times, the split (`loo`,
`temporal` or `random`, see `marlrec.data.split_labels`), and a cache of the result keyed by the
source files' names, sizes and mtimes, the config (split options included) and, for the random
split, the seed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import re
import string
import warnings
import zipfile
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from marlrec.data import (
    TEST,
    TRAIN,
    VALID,
    Interactions,
    RecData,
    SplitMethod,
    split_from_labels,
    split_labels,
)
from marlrec.datasets import Dataset, validate_split
from marlrec.io import write_npz
from marlrec.registry import PluginError

Kind = Literal["int", "float", "str", "auto"]  # auto: let pandas infer (ids of unknown type)

_DTYPES = {"int": "int64", "float": "float64", "str": "object"}
# A stand-in for multi-character separators (MovieLens' "::"), which pandas' C parser lacks.
_UNIT_SEP = "\x1f"
# Bump when the cache layout or the parsing changes, so that stale entries are never read.
CACHE_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class Source:
    """A file that data comes from, as messages name it."""

    path: Path
    where: str  # who reads it, for messages: "dataset 'movielens'"

    def error(self, what: str, line: int | None = None) -> PluginError:
        """A one-line error naming this file and, when known, the line."""
        return self._error(what, None if line is None else f"line {line}")

    def row_error(self, what: str, row: int) -> PluginError:
        """A one-line error about data row `row` (0-based), placed as well as the file allows."""
        return self._error(what, self.position(row))

    def line_of(self, row: int) -> int | None:
        """The line of data row `row` (0-based), where the file has lines to name."""
        return None

    def position(self, row: int) -> str | None:
        """Where data row `row` (0-based) is, as messages say it ("line 7"); None if unknown."""
        line = self.line_of(row)
        return None if line is None else f"line {line}"

    def _error(self, what: str, position: str | None) -> PluginError:
        at = f", {position}" if position else ""
        return PluginError(f"{self.where}: {self.path}{at}: {_one_line(what)}")


@dataclass(frozen=True, kw_only=True)
class Table(Source):
    """One delimited text file and how to read it."""

    sep: str
    columns: Mapping[str, Kind]  # the columns to return, and how to parse each
    names: tuple[str, ...] = ()  # every field's name for a headerless file; () means a header row
    encoding: str = "utf-8"
    quoted: bool = True  # double quotes may enclose fields (CSV); False for MovieLens' .dat/u.*
    nullable: frozenset[str] = frozenset()  # returned columns that may be empty
    every_field: bool = True  # parse all fields so a row's field count is checked; False: usecols

    def line_of(self, row: int) -> int:
        return line_of(self, row)


@dataclass(frozen=True, kw_only=True)
class ParquetTable(Source):
    """One Parquet file and the columns to read from it."""

    columns: Mapping[str, Kind]  # the columns to return, and what each must hold
    nullable: frozenset[str] = frozenset()  # returned columns that may be null

    def position(self, row: int) -> str:
        return f"row {row + 1}"  # no lines to name: the data row, counted from 1


PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_MAGIC = b"PAR1"  # the first (and last) four bytes of every Parquet file


def is_parquet(source: Source) -> bool:
    """Whether a file is Parquet: by its suffix, or else by the magic bytes it starts with."""
    if source.path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    try:
        with open(source.path, "rb") as f:
            return f.read(len(_PARQUET_MAGIC)) == _PARQUET_MAGIC
    except OSError as exc:
        raise source.error(f"cannot be read ({exc.strerror or exc})") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def header(table: Table | ParquetTable) -> list[str]:
    """The column names of a file with a header row, or of a Parquet file."""
    if isinstance(table, ParquetTable):
        return _parquet_names(_parquet_schema(table))
    for _, fields in _records(table):
        # pandas skips a UTF-8 byte-order mark, and keeps names otherwise as they are.
        return [fields[0].removeprefix("\ufeff"), *fields[1:]]
    raise table.error("the file is empty")


def read_table(table: Table | ParquetTable) -> pd.DataFrame:
    """Parse `table` into its `columns`; a malformed row raises a `PluginError` naming its line."""
    if isinstance(table, ParquetTable):
        return _read_parquet(table)
    if not table.names:
        found = header(table)
        missing = [c for c in table.columns if c not in found]
        if missing:
            raise table.error(f"no column '{missing[0]}' (columns: {', '.join(found)})")
    try:
        with warnings.catch_warnings():
            # Rows that all have more fields than names only warn; treat that as malformed too.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # Mixed types in an inferred column are normalised to text below.
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            frame = _read_csv(table)
    except pd.errors.EmptyDataError:
        raise table.error("the file is empty") from None
    except (ValueError, OverflowError, UnicodeDecodeError, pd.errors.ParserWarning) as exc:
        raise _locate_problem(table, fallback=str(exc)) from None
    required = [c for c in table.columns if c not in table.nullable]
    if required and frame[required].isna().to_numpy().any():
        raise _locate_problem(table, fallback="a required field is empty")
    for name, kind in table.columns.items():
        # Chunked type inference can leave both ints and strings in one column; ids must
        # compare and sort as one type, so such a column becomes text throughout.
        if kind == "auto" and frame[name].dtype == object:
            frame[name] = frame[name].astype(str)
    return frame[list(table.columns)]


def _read_csv(table: Table) -> pd.DataFrame:
    sep = table.sep
    source: Any = table.path
    if len(sep) > 1:
        data = table.path.read_bytes().replace(sep.encode(table.encoding), _UNIT_SEP.encode())
        source, sep = io.BytesIO(data), _UNIT_SEP
    dtypes = {c: _DTYPES[k] for c, k in table.columns.items() if k != "auto"}
    return pd.read_csv(
        source,
        sep=sep,
        header=None if table.names else 0,
        names=list(table.names) or None,
        usecols=None if table.every_field else list(table.columns),
        dtype=dtypes,
        index_col=False,
        encoding=table.encoding,
        quoting=csv.QUOTE_MINIMAL if table.quoted else csv.QUOTE_NONE,
        keep_default_na=False,  # a title "NA" or a tag "null" is text, not a missing value
        na_values=[""],
        engine="c",
    )


def _records(table: Table) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each non-blank record, split as pandas splits them."""
    if len(table.sep) > 1:
        yield from _split_records(table, _decoded_lines(table, replace_sep=True))
        return
    try:
        with open(table.path, encoding=table.encoding, newline="") as f:
            yield from _split_records(table, f)
    except UnicodeDecodeError:
        # The decoder does not say on which line it failed; find it line by line, only now.
        for _ in _decoded_lines(table, replace_sep=False):
            pass
        raise table.error(f"not valid {table.encoding} text") from None


def _decoded_lines(table: Table, *, replace_sep: bool) -> Iterator[str]:
    with open(table.path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode(table.encoding)
            except UnicodeDecodeError:
                raise table.error(f"not valid {table.encoding} text", number) from None
            yield text.replace(table.sep, _UNIT_SEP) if replace_sep else text


def _split_records(table: Table, lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    sep = _UNIT_SEP if len(table.sep) > 1 else table.sep
    quoting = csv.QUOTE_MINIMAL if table.quoted else csv.QUOTE_NONE
    reader = csv.reader(lines, delimiter=sep, quoting=quoting)
    start = 1
    try:
        for fields in reader:
            if fields:
                yield start, fields
            start = reader.line_num + 1  # a quoted field may have spanned several lines
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise table.error(str(exc), start) from None


def _data_records(table: Table) -> Iterator[tuple[int, list[str]]]:
    records = _records(table)
    if not table.names:
        next(records, None)
    return records


def line_of(table: Table, row: int) -> int:
    """The line on which data row `row` (0-based, as pandas numbers rows) begins."""
    for k, (line, _) in enumerate(_data_records(table)):
        if k == row:
            return line
    raise table.error(f"has no data row {row + 1}")


def _locate_problem(table: Table, *, fallback: str) -> PluginError:
    """Scan the file record by record for the first malformed row; only runs after a failure."""
    problem = _row_checker(table, list(table.names) or header(table))
    for line, fields in _data_records(table):
        what = problem(fields)
        if what is not None:
            return table.error(what, line)
    return table.error(fallback)


def _row_checker(table: Table, names: list[str]) -> Callable[[list[str]], str | None]:
    """What is wrong with one record, or None; the per-column work is prepared once."""
    n = len(names)
    checks = [
        (names.index(name), name, _PARSERS.get(kind), name in table.nullable)
        for name, kind in table.columns.items()
    ]
    sep = repr(table.sep)

    def problem(fields: list[str]) -> str | None:
        if table.every_field and len(fields) != n:
            # A quote left open swallows the lines after it into one field.
            hint = " (a quote opened here is never closed)" if _spans_lines(fields) else ""
            return f"expected {n} fields separated by {sep}, found {len(fields)}{hint}"
        for i, name, parse, nullable in checks:
            if i >= len(fields):
                return f"no {name} field (found {len(fields)} fields separated by {sep})"
            value = fields[i]
            if value == "":
                if nullable:
                    continue
                return f"empty {name}"
            if parse is not None:
                try:
                    parse[0](value)
                except ValueError:
                    return f"{name} {value!r} is not {parse[1]}"
        return None

    return problem


def _spans_lines(fields: list[str]) -> bool:
    return any("\n" in f for f in fields)


_PARSERS: dict[str, tuple[Callable[[str], object], str]] = {
    "int": (int, "an integer"),
    "float": (float, "a number"),
}


# --- Parquet -------------------------------------------------------------------------------

# How pandas stores an unnamed, non-default index; it is not a column users name.
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")


def _parquet_schema(table: ParquetTable) -> pa.Schema:
    try:
        return pq.read_schema(table.path)
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(table, exc) from None


def _unreadable(table: ParquetTable, exc: Exception) -> PluginError:
    # Arrow's reasons can carry raw bytes from the damaged file; keep the message printable.
    reason = _one_line("".join(ch if ch.isprintable() else " " for ch in str(exc)))
    return table.error(f"not a readable Parquet file ({reason.rstrip('.')})")


def _parquet_names(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if not _PANDAS_INDEX.fullmatch(n)]


def _read_parquet(table: ParquetTable) -> pd.DataFrame:
    """The named columns, checked, as the text path would give them (ids as int64 or str)."""
    schema = _parquet_schema(table)
    found = _parquet_names(schema)
    missing = [c for c in table.columns if c not in found]
    if missing:
        raise table.error(f"no column '{missing[0]}' (columns: {', '.join(found)})")
    for name, kind in table.columns.items():
        arrow_type = schema.field(name).type
        if kind != "str" and pa.types.is_nested(arrow_type):
            raise table.error(f"column '{name}' holds {arrow_type} values, not single values")
    try:
        # Nullable dtypes keep integer columns with nulls integral (1999, not 1999.0).
        frame = pd.read_parquet(
            table.path, columns=list(table.columns), dtype_backend="numpy_nullable"
        )
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(table, exc) from None
    # A column that pandas had stored as the index comes back as the index.
    lifted = [n for n in frame.index.names if n in table.columns]
    frame = (frame.reset_index(lifted) if lifted else frame).reset_index(drop=True)
    return pd.DataFrame(
        {
            name: _parquet_column(table, name, kind, frame[name])
            for name, kind in table.columns.items()
        }
    )


def _parquet_column(table: ParquetTable, name: str, kind: Kind, values: pd.Series) -> Any:
    """One column checked for nulls and empty ids, then converted as `kind` asks."""
    missing = values.isna().to_numpy(dtype=bool)
    if name not in table.nullable:
        if missing.any():
            raise table.row_error(f"{name} is null", int(missing.argmax()))
        if isinstance(values.dtype, pd.StringDtype):
            empty = (values == "").to_numpy(dtype=bool)
            if empty.any():
                raise table.row_error(f"empty {name}", int(empty.argmax()))
    if kind == "str":
        return np.array([_cell_text(v) for v in values.astype(object)], dtype=object)
    if kind == "auto":
        return _plain(values, missing)
    return _parquet_numbers(table, name, kind, values, missing)


def _plain(values: pd.Series, missing: np.ndarray) -> Any:
    """Nullable pandas types as plain NumPy ones; dates and other kinds as they are."""
    dtype = values.dtype
    if pd.api.types.is_integer_dtype(dtype) and not missing.any():
        return values.to_numpy(dtype=np.int64)
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    if isinstance(dtype, pd.StringDtype):
        return values.to_numpy(dtype=object, na_value=None)
    return values


def _parquet_numbers(
    table: ParquetTable, name: str, kind: Kind, values: pd.Series, missing: np.ndarray
) -> np.ndarray:
    """Numbers, from numeric columns or from text that reads as numbers (as in a CSV file)."""
    if kind == "int" and pd.api.types.is_integer_dtype(values.dtype) and not missing.any():
        return values.to_numpy(dtype=np.int64)  # no trip through float64, which rounds
    if pd.api.types.is_numeric_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        parsed = pd.to_numeric(values.astype(object), errors="coerce")
        numbers = np.asarray(parsed, dtype=np.float64)
    bad = np.isnan(numbers) & ~missing
    if kind == "int":
        bad |= ~missing & ~np.isnan(numbers) & (numbers != np.floor(numbers))
    if bad.any():
        row = int(bad.argmax())
        raise table.row_error(f"{name} {show(values.iloc[row])} is not {_PARSERS[kind][1]}", row)
    # An integer column with nulls (allowed only where nullable) stays float, nulls as NaN.
    return numbers.astype(np.int64) if kind == "int" and not missing.any() else numbers


def _cell_text(value: Any) -> str | None:
    """A cell as text, None when missing; a list (say, of genres) is its items joined by ", "."""
    if isinstance(value, list | tuple | np.ndarray):
        return ", ".join(t for t in map(_cell_text, value) if t)
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return None
    return str(value)


def show(value: Any) -> str:
    """An id as a message shows it: 42, or 'u42' for text."""
    value = value.item() if isinstance(value, np.generic) else value
    return repr(value) if isinstance(value, str) else str(value)


def check_unique(table: Source, ids: pd.Series, label: str) -> None:
    """Each id in an item file must appear once; name the second occurrence's line (or row)."""
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        row = int(dup.argmax())
        first = table.position(int((ids == ids.iloc[row]).to_numpy().argmax()))
        raise table.row_error(
            f"duplicate {label} {show(ids.iloc[row])}" + (f" (first on {first})" if first else ""),
            row,
        )


def times_in_seconds(table: Source, column: str, values: pd.Series) -> np.ndarray:
    """Numbers as they are; otherwise ISO-8601 dates, as seconds since 1970."""
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64)
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise table.row_error(
            f"{column} {show(values.iloc[row])} is neither a number nor an ISO-8601 date", row
        )
    epoch = pd.Timestamp(0, tz="UTC")
    return ((parsed - epoch) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class RawInteractions:
    """Interactions with the file's own ids, in file order."""

    table: Source
    user: np.ndarray
    item: np.ndarray
    time: np.ndarray  # float64
    value: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, keep: np.ndarray) -> RawInteractions:
        return dataclasses.replace(
            self,
            user=self.user[keep],
            item=self.item[keep],
            time=self.time[keep],
            value=self.value[keep],
        )


@dataclass(frozen=True, kw_only=True)
class Filters:
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    rating_threshold: float | None = None
    k_core_setting: str = ""  # how the config names the minimums, for messages; "" spells both

    def validate(self, where: str) -> None:
        if self.min_user_interactions < 0 or self.min_item_interactions < 0:
            raise PluginError(
                f"{where}: min_user_interactions and min_item_interactions must be >= 0"
            )


def catalog_rows(raw: RawInteractions, ids: pd.Series, catalog: Source, label: str) -> pd.Index:
    """Index the item file's ids; every interaction must name one of them (else its line)."""
    index = pd.Index(ids)
    missing = index.get_indexer(raw.item) < 0
    if missing.any():
        row = int(missing.argmax())
        raise raw.table.row_error(
            f"{label} {show(raw.item[row])} is not in {catalog.path.name}", row
        )
    return index


def apply_filters(raw: RawInteractions, filters: Filters) -> RawInteractions:
    """Keep ratings >= the threshold, then drop sparse users and items until none is left."""
    source = raw.table
    if len(raw) == 0:
        raise source.error("has no interactions")
    if filters.rating_threshold is not None:
        raw = raw.subset(raw.value >= filters.rating_threshold)
        if len(raw) == 0:
            raise source.error(
                f"no rating is >= rating_threshold={filters.rating_threshold}, so none is left"
            )
    if filters.min_user_interactions > 1 or filters.min_item_interactions > 1:
        raw = raw.subset(_k_core(raw, filters))
        if len(raw) == 0:
            setting = filters.k_core_setting or (
                f"min_user_interactions={filters.min_user_interactions}, "
                f"min_item_interactions={filters.min_item_interactions}"
            )
            raise source.error(f"k-core filtering ({setting}) left no interactions")
    return raw


def _k_core(raw: RawInteractions, filters: Filters) -> np.ndarray:
    """Iterate until stable, since dropping an item can push a user below the minimum again."""
    users, n_users = _codes(raw.user)
    items, n_items = _codes(raw.item)
    keep = np.ones(len(raw), dtype=bool)
    while True:
        user_count = np.bincount(users[keep], minlength=n_users)
        item_count = np.bincount(items[keep], minlength=n_items)
        sparse = (user_count[users] < filters.min_user_interactions) | (
            item_count[items] < filters.min_item_interactions
        )
        drop = keep & sparse
        if not drop.any():
            return keep
        keep &= ~drop


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), len(uniques)


def densify(raw: RawInteractions) -> tuple[Interactions, np.ndarray, np.ndarray]:
    """Dense ids ordered by raw id; a stable sort by (user, time) keeps file order among ties."""
    users, user_ids = pd.factorize(raw.user, sort=True)
    items, item_ids = pd.factorize(raw.item, sort=True)
    # Text ids as a fixed-width str array, which is also what the cache gives back.
    user_ids, item_ids = (
        ids.astype(str) if ids.dtype == object else ids for ids in (user_ids, item_ids)
    )
    order = _user_time_order(users.astype(np.int64), len(user_ids), raw.time)
    interactions = Interactions(
        user=users[order].astype(np.int64),
        item=items[order].astype(np.int64),
        time=raw.time[order].astype(np.float64),
        value=raw.value[order].astype(np.float32),
    )
    return interactions, np.asarray(user_ids), np.asarray(item_ids)


def _user_time_order(users: np.ndarray, n_users: int, time: np.ndarray) -> np.ndarray:
    """Stable order by (user, time): rows with equal keys stay in file order, as in RecBole."""
    if len(time) and np.array_equal(time, np.floor(time)):
        low = float(time.min())
        span = int(time.max() - low) + 1
        if n_users * span < 2**62:
            # Integer times (Unix seconds) fit beside the user in one int64 key; a stable sort
            # of that key is several times faster than lexsort, most of all on files already
            # grouped by user, as the larger MovieLens releases are.
            key = users * span + (time - low).astype(np.int64)
            return np.argsort(key, kind="stable")
    return np.lexsort((time, users))


@dataclass(frozen=True, kw_only=True)
class SplitOptions:
    """How a dataset is split; the seed only counts for the random split."""

    method: SplitMethod = "loo"
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0

    @classmethod
    def of(cls, config: Any, seed: int) -> SplitOptions:
        """From a dataset config's `split` and `split_ratios` fields."""
        method = config.split
        ratios = tuple(float(r) for r in config.split_ratios)
        return cls(method=method, ratios=ratios, seed=seed if method == "random" else 0)

    def labels(self, interactions: Interactions, n_users: int) -> np.ndarray:
        return split_labels(
            interactions, n_users, method=self.method, ratios=self.ratios, seed=self.seed
        )


@dataclass(frozen=True, kw_only=True)
class Parsed:
    """A dataset read, filtered and remapped to dense ids, but not yet split."""

    name: str
    interactions: Interactions
    n_users: int
    item_text: list[str]
    item_attributes: dict[str, np.ndarray]
    source: Source  # the interactions file, which messages about the result name

    def with_split(self, labels: np.ndarray) -> RecData:
        return RecData(
            name=self.name,
            n_users=self.n_users,
            n_items=len(self.item_text),
            interactions=self.interactions,
            item_text=self.item_text,
            split=split_from_labels(self.interactions, self.n_users, labels),
            item_attributes=self.item_attributes,
        )


class FileDataset(Dataset):
    """A dataset read from files, then split and cached; its config has `split` fields.

    `loaded_from_cache` tells whether the last `load` was served from the cache, whose file is
    `cache_file`.
    """

    default_simulator = "replay"  # logs hold no ground-truth tastes: sessions replay them
    plugin: ClassVar[str]  # the entry-point name, which also names the cache files
    where: ClassVar[str]  # "dataset '<plugin>'", for messages

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        validate_split(config, self.where)
        self.loaded_from_cache = False
        self.cache_file: Path | None = None

    def load(self, *, seed: int, cache_dir: Path) -> RecData:
        """Parse, split and cache; served from the cache while the files and options are the same.

        The seed plays a part in the random split only.
        """
        sources = self.sources(cache_dir)
        split = SplitOptions.of(self.config, seed)
        self.cache_file = cache_file(cache_dir, self.plugin, sources, self.config, split)
        cached = load_cache(self.cache_file, self.where)
        self.loaded_from_cache = cached is not None
        if cached is not None:
            return cached
        return split_and_cache(self.parse(sources), split, self.cache_file)

    @abstractmethod
    def sources(self, cache_dir: Path) -> list[Path]:
        """The files to read (the first holds the interactions); their stamps key the cache."""

    @abstractmethod
    def parse(self, sources: list[Path]) -> Parsed:
        """Read, filter and remap the files that `sources` returned."""


def split_and_cache(parsed: Parsed, split: SplitOptions, path: Path) -> RecData:
    """Split, check that every part has something in it, cache the result, and return it."""
    labels = split.labels(parsed.interactions, parsed.n_users)
    check_parts(parsed, split, labels)
    save_cache(path, parsed, labels)
    return parsed.with_split(labels)


def check_parts(parsed: Parsed, split: SplitOptions, labels: np.ndarray) -> None:
    """An empty train, valid or test part is an error naming the source and the reason."""
    counts = np.bincount(labels, minlength=3)
    parts = (("train", TRAIN), ("valid", VALID), ("test", TEST))
    empty = [name for name, part in parts if not counts[part]]
    if not empty:
        return
    most = int(np.bincount(parsed.interactions.user, minlength=parsed.n_users).max())
    if split.method == "loo":
        raise parsed.source.error(
            "no user has the 3 interactions that leave-one-out needs for a valid and a test "
            f"item (most per user: {most})"
        )
    if split.method == "random":
        raise parsed.source.error(
            f"split=random with split_ratios={list(split.ratios)} leaves no {empty[0]} "
            "interactions: a user needs 3 interactions for a train, a valid and a test one "
            f"(most per user: {most})"
        )
    distinct = len(np.unique(parsed.interactions.time))
    raise parsed.source.error(
        f"split=temporal with split_ratios={list(split.ratios)} leaves no {empty[0]} "
        f"interactions: equal times fall on one side of a cutoff, and the "
        f"{len(parsed.interactions)} interactions have {distinct} distinct times"
    )


def template_fields(template: str, allowed: Sequence[str], where: str) -> list[str]:
    """The fields a `str.format` template uses, each of which must be one of `allowed`."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise PluginError(f"{where}: text_template {template!r} is malformed: {exc}") from None
    for f in fields:
        if f not in allowed:
            raise PluginError(
                f"{where}: text_template uses unknown field {{{f}}}; available: "
                + ", ".join(f"{{{a}}}" for a in allowed)
            )
    return fields


def render(template: str, columns: Mapping[str, Sequence[str]], n: int) -> list[str]:
    """Fill the template per item; a field left empty leaves no empty "()" behind."""
    texts = (template.format_map({k: v[i] for k, v in columns.items()}) for i in range(n))
    return [_EMPTY_PARENS.sub("", t).strip() for t in texts]


_EMPTY_PARENS = re.compile(r"\s*\(\s*\)")


def as_text(values: pd.Series) -> list[str]:
    """Text cells with missing ones as empty strings."""
    return values.fillna("").astype(str).str.strip().tolist()


# --- cache ---------------------------------------------------------------------------------


def cache_file(
    cache_dir: Path, plugin: str, sources: Sequence[Path], config: Any, split: SplitOptions
) -> Path:
    """Where the parsed, remapped and split data of these files under this config is cached."""
    stamps = []
    for p in sources:
        st = p.stat()
        stamps.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    key = json.dumps(
        {
            "plugin": plugin,
            "version": CACHE_VERSION,
            "files": stamps,
            "config": dataclasses.asdict(config),
            "split": dataclasses.asdict(split),
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / "datasets" / f"{plugin}-{digest}.npz"


def save_cache(path: Path, parsed: Parsed, labels: np.ndarray) -> None:
    """Write interactions, split labels, texts and attributes in one atomic step."""
    arrays: dict[str, np.ndarray] = {
        "name": np.array(parsed.name),
        "n_users": np.array(parsed.n_users),
        "source": np.array(str(parsed.source.path)),
        "user": parsed.interactions.user,
        "item": parsed.interactions.item,
        "time": parsed.interactions.time,
        "value": parsed.interactions.value,
        "split_labels": labels,
    }
    arrays["text_blob"], arrays["text_offsets"] = _pack(parsed.item_text)
    for key, value in parsed.item_attributes.items():
        if value.dtype.kind in "UO":
            arrays[f"sattr_{key}_blob"], arrays[f"sattr_{key}_offsets"] = _pack(value.tolist())
        else:
            arrays[f"attr_{key}"] = value
    write_npz(path, **arrays)


def load_cache(path: Path, where: str) -> RecData | None:
    """The cached data, or None when absent or unreadable (then it is rebuilt and rewritten)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        attributes: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            if key.startswith("attr_"):
                attributes[key.removeprefix("attr_")] = value
            elif key.startswith("sattr_") and key.endswith("_blob"):
                name = key.removeprefix("sattr_").removesuffix("_blob")
                strings = _unpack(value, arrays[f"sattr_{name}_offsets"])
                attributes[name] = np.array(strings, dtype=str)
        interactions = Interactions(
            user=arrays["user"], item=arrays["item"], time=arrays["time"], value=arrays["value"]
        )
        labels = arrays["split_labels"]
        if len(labels) != len(interactions):
            return None
        parsed = Parsed(
            name=str(arrays["name"]),
            interactions=interactions,
            n_users=int(arrays["n_users"]),
            item_text=_unpack(arrays["text_blob"], arrays["text_offsets"]),
            item_attributes=attributes,
            source=Source(path=Path(str(arrays["source"])), where=where),
        )
        return parsed.with_split(labels)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _pack(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 byte array plus offsets: compact, and loadable without pickle."""
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpack(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    data = blob.tobytes()
    bounds = offsets.tolist()
    return [data[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds)]
