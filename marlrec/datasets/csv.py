"""`csv`: any interactions table, CSV or Parquet, with an optional item-text table.

Either file may be delimited text (with a header row) or Parquet: a `.parquet` or `.pq` name, or
a file that starts with Parquet's magic bytes, is read as Parquet, whatever `sep` and `encoding`
say. Columns are named in the config. Ids may be numbers or strings (numbers are ordered
numerically, strings alphabetically, when they are remapped to dense ids); the time column may
hold numbers, ISO-8601 dates or, in Parquet, timestamps and dates, and without one the file order
is the time order. Without a value column every row counts 1.0. A Parquet text column may hold
lists (say, of genres), whose items are joined by ", ". Filtering, remapping, the stable
(user, time) sort, the split, the cache and the error messages are those of the `movielens`
plugin (`marlrec.datasets.tabular`); messages about a Parquet file name the data row, from 1,
where those about text name the line.

`item_attributes["raw_id"]` holds each dense item's id as it appears in the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from marlrec.data import SplitMethod
from marlrec.datasets.files import (
    Kind,
    ParquetTable,
    Source,
    Table,
    check_ids,
    check_unique,
    header,
    is_parquet,
    read_table,
    times_in_seconds,
)
from marlrec.datasets.filters import Filters, RawInteractions, apply_filters, catalog_rows, densify
from marlrec.datasets.splitting import Parsed
from marlrec.datasets.tabular import FileDataset
from marlrec.datasets.text import as_text, join_sentences, render, template_fields
from marlrec.registry import PluginError


class CsvDataset(FileDataset):
    """Interactions from a CSV or Parquet file; item texts from a second one, or "item <id>"."""

    @dataclass(kw_only=True)
    class Config:
        path: str = ""
        """The interactions file, CSV with a header row or Parquet (one row per interaction)."""
        sep: str = ","
        """Field separator of text files; "\\t" (as typed on a command line) means a tab."""
        encoding: str = "utf-8"
        """Text encoding of text files (Parquet text is always UTF-8)."""
        user_col: str = "user_id"
        """Column of user ids."""
        item_col: str = "item_id"
        """Column of item ids."""
        time_col: str = ""
        """Column of times (numbers, ISO-8601 dates, Parquet timestamps); empty: file order."""
        value_col: str = ""
        """Column of ratings or other values; empty: every interaction is 1.0."""
        items_path: str = ""
        """Optional item file (CSV with a header row, or Parquet): ids and describing columns."""
        item_id_col: str = "item_id"
        """Column of item ids in the item file."""
        text_cols: list[str] = field(default_factory=list)
        """Item-file columns that make up the text; empty: all but the id column."""
        text_template: str = ""
        """How to join them, e.g. "{title}: {plot}"; empty: the non-empty cells joined by '. '."""
        min_user_interactions: int = 0
        """Drop users with fewer interactions (iterated with the item minimum until stable)."""
        min_item_interactions: int = 0
        """Drop items with fewer interactions (iterated with the user minimum until stable)."""
        rating_threshold: float | None = None
        """Keep only values >= this (needs value_col); None keeps every interaction."""
        split: SplitMethod = "loo"
        """loo (each user's last item is test, the one before valid), temporal or random."""
        split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
        """Train, valid and test fractions of the temporal and random splits (not loo)."""

    config: Config

    def __init__(self, config: Config) -> None:
        _validate(config, self.where)
        super().__init__(config)

    def sources(self, cache_dir: Path) -> list[Path]:
        c = self.config
        files = [_existing(c.path, "path", self.where)]
        if c.items_path:
            files.append(_existing(c.items_path, "items_path", self.where))
        return files

    def parse(self, sources: list[Path]) -> Parsed:
        raw = self._interactions(sources[0])
        return self._assemble(raw, sources[1] if len(sources) > 1 else None)

    def _interactions(self, path: Path) -> RawInteractions:
        c = self.config
        columns: dict[str, Kind] = {c.user_col: "auto", c.item_col: "auto"}
        if c.time_col:
            columns[c.time_col] = "auto"
        if c.value_col:
            columns[c.value_col] = "float"
        table = self._table(path, columns)
        frame = read_table(table)
        for column in (c.user_col, c.item_col):
            check_ids(table, frame[column], column)
        n = len(frame)
        time = (
            times_in_seconds(table, c.time_col, frame[c.time_col])
            if c.time_col
            else np.arange(n, dtype=np.float64)
        )
        value = frame[c.value_col].to_numpy() if c.value_col else np.ones(n)
        return RawInteractions(
            table=table,
            user=frame[c.user_col].to_numpy(),
            item=frame[c.item_col].to_numpy(),
            time=time,
            value=value.astype(np.float32),
        )

    def _assemble(self, raw: RawInteractions, items_path: Path | None) -> Parsed:
        c = self.config
        filters = Filters(
            min_user_interactions=c.min_user_interactions,
            min_item_interactions=c.min_item_interactions,
            rating_threshold=c.rating_threshold,
        )
        if items_path is None:
            raw = apply_filters(raw, filters)
            interactions, user_ids, item_ids = densify(raw)
            texts = [f"item {i}" for i in item_ids.tolist()]
        else:
            items, text_cols, table = self._items(items_path)
            ids = items[c.item_id_col]
            raw, ids = _same_id_type(raw, ids)
            check_unique(table, ids, c.item_id_col)
            catalog = catalog_rows(raw, ids, table, c.item_col)
            raw = apply_filters(raw, filters)
            interactions, user_ids, item_ids = densify(raw)
            rows = catalog.get_indexer(item_ids)
            texts = self._texts(items.iloc[rows], text_cols)
        return Parsed(
            name=self.name,
            interactions=interactions,
            n_users=len(user_ids),
            user_ids=user_ids,
            item_text=texts,
            item_attributes={"raw_id": item_ids},
            source=raw.table,
        )

    def _items(self, path: Path) -> tuple[pd.DataFrame, list[str], Table | ParquetTable]:
        c = self.config
        found = header(self._table(path, {}))
        text_cols = list(c.text_cols) or [n for n in found if n != c.item_id_col]
        allowed = [c.item_id_col, *text_cols]
        template_fields(c.text_template, allowed, f"{self.where}: {path}")
        used = list(dict.fromkeys([c.item_id_col, *text_cols]))
        columns: dict[str, Kind] = {n: "str" for n in used}
        columns[c.item_id_col] = "auto"
        table = self._table(path, columns, nullable=frozenset(used) - {c.item_id_col})
        return read_table(table), text_cols, table

    def _table(
        self, path: Path, columns: dict[str, Kind], nullable: frozenset[str] = frozenset()
    ) -> Table | ParquetTable:
        """Parquet by name or content, else delimited text; either way only `columns` are read."""
        if is_parquet(Source(path=path, where=self.where)):
            return ParquetTable(path=path, where=self.where, columns=columns, nullable=nullable)
        c = self.config
        return Table(
            path=path,
            where=self.where,
            sep=_separator(c.sep),
            columns=columns,
            encoding=c.encoding,
            nullable=nullable,
            every_field=False,  # a wide table: read only the named columns
        )

    def _texts(self, items: pd.DataFrame, text_cols: list[str]) -> list[str]:
        c = self.config
        cells = {n: as_text(items[n]) for n in items.columns}
        if c.text_template:
            return render(c.text_template, cells, len(items))
        rows = zip(*(cells[n] for n in text_cols), strict=True)
        return [join_sentences([v for v in row if v]) for row in rows]


def _same_id_type(raw: RawInteractions, ids: pd.Series) -> tuple[RawInteractions, pd.Series]:
    """Compare ids as text when one file's ids are numbers and the other's are not."""
    numeric = pd.api.types.is_numeric_dtype
    if numeric(raw.item.dtype) == numeric(ids.dtype):
        return raw, ids
    item = pd.Series(raw.item).astype(str).to_numpy()
    return dataclasses.replace(raw, item=item), ids.astype(str)


def _separator(sep: str) -> str:
    """Hydra passes a command-line `data.sep='\\t'` on as backslash-t: read it as a tab."""
    return "\t" if sep == "\\t" else sep


def _existing(path: str, key: str, where: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise PluginError(f"{where}: {key} {str(p)!r} is not a file")
    return p


def _validate(c: CsvDataset.Config, where: str) -> None:
    if not c.path:
        raise PluginError(f"{where}: set data.path=<interactions CSV or Parquet file>")
    if not c.sep:
        raise PluginError(f"{where}: sep must not be empty")
    if not c.user_col or not c.item_col or c.user_col == c.item_col:
        raise PluginError(f"{where}: user_col and item_col must be two different column names")
    if c.rating_threshold is not None and not c.value_col:
        raise PluginError(f"{where}: rating_threshold needs value_col, the column it applies to")
    if c.text_template and not c.items_path:
        raise PluginError(f"{where}: text_template needs items_path, the file it draws on")
    Filters(
        min_user_interactions=c.min_user_interactions,
        min_item_interactions=c.min_item_interactions,
    ).validate(where)
