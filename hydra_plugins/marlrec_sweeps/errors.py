"""A bad sweep or launcher setting ends the command with one line, as `marlrec train` does."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

log = logging.getLogger(__name__)


def fail(line: str) -> NoReturn:
    """Log `line`, print it on stderr as `marlrec: <line>`, exit with status 2."""
    log.error(line)
    print(f"marlrec: {line}", file=sys.stderr)
    raise SystemExit(2)
