"""Interactions as read (raw ids), filtered (rating threshold, iterated k-core) and remapped to
dense ids ordered by raw id, sorted stably by (user, time) so file order survives among ties."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from marlrec.data import Interactions
from marlrec.datasets.files import Source, show
from marlrec.registry import PluginError


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
