"""Dataset plugins (entry-point group `marlrec.datasets`): they produce a `RecData`."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from marlrec.data import SPLIT_METHODS, RecData, check_split_ratios
from marlrec.plugin import Plugin
from marlrec.registry import PluginError


class Dataset(Plugin):
    """Constructed as `Dataset(config)`."""

    default_simulator: ClassVar[str | None] = None
    """The simulator that `data=<this>` selects unless `simulator=` says otherwise; None
    keeps the primary config's choice."""
    default_choices: ClassVar[dict[str, str | list[str]]] = {}
    """Other plugin choices that `data=<this>` makes, by config group (`retrieval`,
    `baseline`, ...), unless the command line or a preset says otherwise: the configuration that
    serves this kind of data without a preset. Empty keeps the primary config's choices."""

    @abstractmethod
    def load(self, *, seed: int, cache_dir: Path) -> RecData:
        """Read or generate the data, remap ids densely and split it, reproducibly for `seed`."""


def validate_split(config: Any, where: str) -> None:
    """A dataset config's `split` and `split_ratios`: a known method and sound ratios."""
    if config.split not in SPLIT_METHODS:
        raise PluginError(
            f"{where}: split must be one of {', '.join(SPLIT_METHODS)}, got {config.split!r}"
        )
    problem = check_split_ratios(config.split_ratios)
    if problem is not None:
        raise PluginError(f"{where}: {problem}")
