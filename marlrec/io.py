"""Atomic file writes: a reader never sees a half-written file, a crash never leaves one."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

# Temporary files are named `.NAME.RANDOM.marlrec.tmp`, so those a killed write left behind
# can be told from anything else and removed (`remove_temp_files`).
TEMP_SUFFIX = ".marlrec.tmp"
# Fault injection for tests: "NAME:N" kills this process (SIGKILL) during its N-th atomic
# write of a file called NAME, with only part of the temporary file written.
KILL_DURING_WRITE = "MARLREC_FAULT_KILL_WRITE"
_writes: Counter[str] = Counter()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        _injected_kill(path, Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through `write(file)` into a temp file, then rename it over `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    # numpy's stubs match **arrays against the keyword allow_pickle: bool.
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def remove_temp_files(root: Path) -> list[Path]:
    """Remove the temporary files that writes killed under `root` left behind."""
    stale = sorted(Path(root).rglob(f"*{TEMP_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _injected_kill(path: Path, tmp: Path) -> None:
    """The KILL_DURING_WRITE fault: a process killed halfway through writing `tmp`."""
    name, _, nth = os.environ.get(KILL_DURING_WRITE, "").rpartition(":")
    if name != path.name:
        return
    _writes[name] += 1
    if str(_writes[name]) == nth:
        os.truncate(tmp, tmp.stat().st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
