"""The shape every plugin shares: a keyword-only `Config` dataclass and a constructor taking it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from marlrec import registry

# Field metadata key: the value a composed config starts from, when it differs from the Python
# default (an interpolation of a run-level key, such as `${cache_dir}`).
COMPOSED_DEFAULT = "marlrec_composed_default"


def composed_default(default: Any, composed: str) -> Any:
    """A `Config` field defaulting to `composed` in a composed run, to `default` in Python."""
    return field(default=default, metadata={COMPOSED_DEFAULT: composed})


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
        # Handed over by the registry when it builds the plugin; else looked up on first use.
        self._installed = registry.being_built(type(self))

    @property
    def name(self) -> str:
        """The name the plugin is installed under (its entry point), or its class name if none."""
        found = self._installed_as()
        return found[1] if found else type(self).__name__

    @property
    def where(self) -> str:
        """Who speaks in a message: e.g. `reward 'click'`."""
        found = self._installed_as()
        return f"{found[0].noun} '{found[1]}'" if found else f"plugin '{type(self).__name__}'"

    def _installed_as(self) -> tuple[registry.Kind, str] | None:
        return getattr(self, "_installed", None) or registry.installed_as(type(self))
