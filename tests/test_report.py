"""What a run's plots are drawn from."""

from __future__ import annotations

import numpy as np

from marlrec.report import item_categories


def test_categories_come_from_a_multi_hot_matrix_or_a_small_code() -> None:
    ids, years = np.arange(100, 108), np.arange(1950, 1990, 5)  # one value per item: no category
    genres = np.eye(3, dtype=np.int64)[[0, 1, 2, 0, 1, 2, 0, 1]]
    assert item_categories({"raw_id": ids, "year": years, "genres": genres})[0] == "genres"
    topic = np.array([2, 0, 2, 0, 2, 0, 2, 0])
    name, one_hot = item_categories({"raw_id": ids, "topic": topic})
    assert name == "topic" and one_hot[:2].tolist() == [[0, 0, 1], [1, 0, 0]]
    assert item_categories({"raw_id": ids, "price": np.linspace(1, 2, 8)}) is None
