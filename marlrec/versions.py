"""Versions of a run: what `marlrec update` writes, and which one is served.

Version 0 is the run dir itself, as `marlrec train` left it. Each update writes version n
(1, 2, ...) whole into `versions/<n>/` (its checkpoints, the interactions and items it adds
to the dataset, `update.json`), under a temporary name that is renamed into place at the
end, and only then points `current_version.json` at it, atomically. A reader (recommend,
evaluate, serve, export) loads the version the pointer names; earlier versions stay as
they were. An update killed at any point leaves the pointer, and so the run, as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marlrec.data import Interactions
from marlrec.io import write_json, write_npz
from marlrec.registry import MarlrecError

POINTER = "current_version.json"
ADDED_INTERACTIONS = "added_interactions.npz"
VERSIONS = "versions"
STAGING_PREFIX = ".staging-"


def current_version(run_dir: Path) -> int:
    """The version the run serves: 0 until an update lands."""
    pointer = run_dir / POINTER
    if not pointer.is_file():
        return 0
    try:
        version = json.loads(pointer.read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MarlrecError(f"{pointer} is not a version pointer: {exc}") from None
    if not isinstance(version, int) or version < 0 or not version_dir(run_dir, version).is_dir():
        raise MarlrecError(f"{pointer} names version {version!r}, which {run_dir} does not hold")
    return version


def version_dir(run_dir: Path, version: int) -> Path:
    return run_dir if version == 0 else run_dir / VERSIONS / str(version)


def current_dir(run_dir: Path) -> Path:
    """The folder of the served version: its checkpoints, added items and interactions."""
    return version_dir(run_dir, current_version(run_dir))


def pointer_stamp(run_dir: Path) -> tuple[int, int] | None:
    """What changes when the pointer is replaced (its inode and mtime): a cheap poll."""
    try:
        stat = (run_dir / POINTER).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def next_version(run_dir: Path) -> int:
    """A number no version uses yet (one an interrupted update renamed into place included)."""
    folder = run_dir / VERSIONS
    taken = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max([current_version(run_dir), *taken]) + 1


def staging_dir(run_dir: Path) -> Path:
    """A fresh folder to write a version into; those interrupted updates left are removed."""
    folder = run_dir / VERSIONS
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=STAGING_PREFIX))
    staging.chmod(0o755)  # as a plain folder would be, not mkdtemp's 0700
    return staging


def publish(run_dir: Path, staging: Path, version: int) -> Path:
    """Rename the written version into place, then point the run at it."""
    target = version_dir(run_dir, version)
    os.replace(staging, target)  # a folder rename: all of it appears at once
    write_json(run_dir / POINTER, {"version": version})
    return target


@dataclass(frozen=True)
class AddedInteractions:
    """Interactions updates added to a run's dataset, all of them up to a version.

    Users from `base_users` on are new: user `base_users + j` has id `new_user_ids[j]` (its
    pseudonym in a pseudonymised run; empty when users are known by index alone).
    """

    base_users: int
    interactions: Interactions
    n_new_users: int
    new_user_ids: np.ndarray  # str, n_new_users long, or empty

    @classmethod
    def load(cls, folder: Path) -> AddedInteractions | None:
        path = folder / ADDED_INTERACTIONS
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {key: saved[key] for key in saved.files}
            part = Interactions(
                user=arrays["user"], item=arrays["item"], time=arrays["time"], value=arrays["value"]
            )
            return cls(
                int(arrays["base_users"]), part, int(arrays["n_new_users"]), arrays["new_user_ids"]
            )
        except Exception as exc:  # a damaged file: name it, whatever numpy raised
            raise MarlrecError(f"{path} is not readable added interactions: {exc}") from None

    def save(self, folder: Path) -> None:
        part = self.interactions
        write_npz(
            folder / ADDED_INTERACTIONS,
            base_users=np.array(self.base_users, np.int64),
            n_new_users=np.array(self.n_new_users, np.int64),
            new_user_ids=self.new_user_ids.astype(str),
            user=part.user.astype(np.int64),
            item=part.item.astype(np.int64),
            time=part.time.astype(np.float64),
            value=part.value.astype(np.float32),
        )
