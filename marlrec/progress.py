"""Progress bars, one helper for all: live on a terminal, off when stderr is a pipe or a log
file, where each redraw would add a carriage-return line to the log."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def live() -> bool:
    """Whether a bar may draw: stderr is a terminal."""
    return sys.stderr.isatty()


def progress_bar(*args: Any, disable: bool = False, **kwargs: Any) -> tqdm:
    """`tqdm(...)`, disabled unless stderr is a terminal."""
    return tqdm(*args, disable=disable or not live(), **kwargs)
