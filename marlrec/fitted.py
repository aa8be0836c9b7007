"""Fitted artefacts (EASE's item-item weights, ...) fitted once per run and cached on disk.

The baseline and the retrieval that need the same artefact ask for it by name and key; the
first asks fits it, the others get the same tensor. On disk it is keyed by a fingerprint of
the data and the settings it was fitted with, so a second run on the same data loads it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch

from marlrec.io import atomic_write

log = logging.getLogger(__name__)

# Artefacts kept in memory: enough for a run's few, without holding every test's catalog.
MEMO_SIZE = 4

# A tensor, or named tensors (a model's weights and its training figures).
Artefact = TypeVar("Artefact", torch.Tensor, dict[str, torch.Tensor])

_memo: OrderedDict[str, Any] = OrderedDict()
_cache_dir: Path | None = None


def use_cache_dir(path: Path | None) -> None:
    """Where fitted artefacts are kept between runs (None: in memory only)."""
    global _cache_dir
    _cache_dir = path


def fingerprint(*parts: np.ndarray | str | float | int) -> str:
    """A short hash of arrays and values, stable across runs and machines."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str(part.dtype).encode() + str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"|")
    return digest.hexdigest()[:20]


def fitted(name: str, key: str, fit: Callable[[], Artefact]) -> Artefact:
    """The artefact `name` for `key`: from memory, else from the disk cache, else `fit()`."""
    memo_key = f"{name}-{key}"
    if memo_key in _memo:
        _memo.move_to_end(memo_key)
        return cast("Artefact", _memo[memo_key])
    path = _cache_dir / "fitted" / f"{memo_key}.pt" if _cache_dir else None
    if path is not None and path.is_file():
        value = torch.load(path, map_location="cpu", weights_only=True)
        log.info("%s: loaded from the cache (%s)", name, path.name)
    else:
        value = fit()
        if path is not None:
            atomic_write(path, lambda f: torch.save(value, f))
    _memo[memo_key] = value
    while len(_memo) > MEMO_SIZE:
        _memo.popitem(last=False)
    return value
