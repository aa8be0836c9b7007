"""Reading the interaction and item files of the file-based datasets: delimited text and Parquet.

Delimited text: pandas' C parser with explicit dtypes does the work. Only when it fails, or leaves
a required field empty, is the file scanned again record by record to name the exact line and
what is wrong with it; that slow path never runs on a good file.

Parquet (`ParquetTable`, chosen by `is_parquet`): `pandas.read_parquet` loads only the named
columns, which are then checked and brought to the types the text path yields. Parquet has no
lines, so messages name the data row instead, counted from 1.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from marlrec.registry import PluginError

Kind = Literal["int", "float", "str", "auto"]  # auto: let pandas infer (ids of unknown type)

_DTYPES = {"int": "int64", "float": "float64", "str": "object"}
# A stand-in for multi-character separators (MovieLens' "::"), which pandas' C parser lacks.
_UNIT_SEP = "\x1f"


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


def check_ids(table: Source, ids: pd.Series, column: str) -> None:
    """Ids must be ids: `NaN` (as text or as a number) or an infinite number is a missing
    value some tool wrote out, and is refused with the line (or row) it is on."""
    values = ids.to_numpy()
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
    elif values.dtype.kind == "O":
        bad = ids.astype(str).str.strip().str.lower().eq("nan").to_numpy()
    else:
        return
    if bad.any():
        row = int(bad.argmax())
        raise table.row_error(f"{column} {show(values[row])} is a missing value, not an id", row)


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
