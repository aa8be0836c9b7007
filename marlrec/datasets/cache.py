"""The cache of a parsed and split dataset, keyed by the source files' names, sizes and mtimes,
the config (split options included) and, for the random split, the seed."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marlrec.data import Interactions, RecData
from marlrec.datasets.files import Source
from marlrec.datasets.splitting import Parsed, SplitOptions
from marlrec.io import write_npz

# Bump when the cache layout or the parsing changes, so that stale entries are never read.
CACHE_VERSION = 3


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
    if parsed.user_ids is not None and parsed.user_ids.dtype.kind in "UO":
        arrays["user_ids_blob"], arrays["user_ids_offsets"] = _pack(parsed.user_ids.tolist())
    elif parsed.user_ids is not None:
        arrays["user_ids"] = parsed.user_ids
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
        user_ids = arrays.get("user_ids")
        if "user_ids_blob" in arrays:
            user_ids = np.array(
                _unpack(arrays["user_ids_blob"], arrays["user_ids_offsets"]), dtype=str
            )
        if len(labels) != len(interactions):
            return None
        parsed = Parsed(
            name=str(arrays["name"]),
            interactions=interactions,
            n_users=int(arrays["n_users"]),
            item_text=_unpack(arrays["text_blob"], arrays["text_offsets"]),
            item_attributes=attributes,
            source=Source(path=Path(str(arrays["source"])), where=where),
            user_ids=user_ids,
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
