"""The shape every plugin shares: a keyword-only `Config` dataclass and a constructor taking it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(kw_only=True)
class NoConfig:
    """For plugins without options."""


class Plugin:
    """Base of every plugin kind. Subclasses declare `Config`, a keyword-only dataclass.

    The registry validates the composed YAML section against `Config` and then calls
    `cls(config, **dependencies)`; each kind's base class documents its dependencies.
    """

    Config: ClassVar[type[Any]] = NoConfig

    def __init__(self, config: Any) -> None:
        self.config = config
