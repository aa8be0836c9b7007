"""The base of the file-based dataset plugins (`movielens`, `csv`, `amazon_reviews`).

A `FileDataset` reads its files (`marlrec.datasets.files`), filters them and remaps ids
(`marlrec.datasets.filters`), builds item texts (`marlrec.datasets.text`), splits
(`marlrec.datasets.splitting`) and caches the result (`marlrec.datasets.cache`).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from marlrec.data import RecData
from marlrec.datasets import Dataset, validate_split
from marlrec.datasets.cache import cache_file, load_cache, save_cache
from marlrec.datasets.splitting import Parsed, SplitOptions, check_parts


class FileDataset(Dataset):
    """A dataset read from files, then split and cached; its config has `split` fields.

    `loaded_from_cache` tells whether the last `load` was served from the cache, whose file is
    `cache_file`.
    """

    default_simulator = "replay"  # logs hold no ground-truth tastes: sessions replay them
    # Logged sequences: the agents rerank the items SASRec and EASE rank best together (content
    # cosine rarely retrieves the logged next item), beside the classical and sequential
    # baselines they must beat.
    default_choices: ClassVar[dict[str, str | list[str]]] = {
        "retrieval": "union",
        "baseline": ["random", "pop", "itemknn", "ease", "sasrec"],
    }

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
        self.cache_file = cache_file(cache_dir, self.name, sources, self.config, split)
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
