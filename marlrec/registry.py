"""Plugins found by Python entry point: listed from package metadata, imported when loaded.

Every kind of plugin has one entry-point group and one Hydra config group. Built-in plugins
register through the same entry points as third-party ones; nothing here special-cases them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any


class MarlrecError(Exception):
    """A user-facing error: its message is one line that says what is wrong and where."""


class PluginError(MarlrecError):
    """A plugin could not be found, loaded or configured."""


@dataclass(frozen=True)
class Kind:
    """One kind of plugin: its Hydra config group and its entry-point group."""

    group: str
    entry_point_group: str
    noun: str
    many: bool = False  # selected as a list (`reward=[click,diversity]`), keyed by plugin name


KINDS: dict[str, Kind] = {
    k.group: k
    for k in (
        Kind("data", "marlrec.datasets", "dataset"),
        Kind("encoder", "marlrec.encoders", "encoder"),
        Kind("state", "marlrec.states", "state"),
        Kind("retrieval", "marlrec.retrievers", "retriever"),
        Kind("env", "marlrec.envs", "environment"),
        Kind("simulator", "marlrec.simulators", "simulator"),
        Kind("agent", "marlrec.agents", "agent"),
        Kind("reward", "marlrec.rewards", "reward", many=True),
        Kind("baseline", "marlrec.baselines", "baseline", many=True),
    )
}

# A package that ships YAML for marlrec's config groups names its config package here,
# e.g. `my_reward = "my_reward_pkg.conf"`; Hydra then searches it like marlrec's own tree.
CONFIG_ENTRY_POINT_GROUP = "marlrec.conf"


# Hydra's mark of a value the user must set: a `Config` field without a default composes to it.
MANDATORY = "???"


@dataclass(frozen=True)
class PluginInfo:
    """An installed plugin as its package metadata describes it (its code is not imported)."""

    kind: str
    name: str
    target: str
    distribution: str


def kind_of(group: str) -> Kind:
    try:
        return KINDS[group]
    except KeyError:
        raise PluginError(f"unknown plugin kind '{group}'; kinds: {', '.join(KINDS)}") from None


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=kind_of(group).entry_point_group)}


def available(group: str) -> list[PluginInfo]:
    """The installed plugins of one kind, sorted by name, read from metadata only."""
    return [
        PluginInfo(group, ep.name, ep.value, ep.dist.name if ep.dist else "?")
        for ep in sorted(_entry_points(group).values(), key=lambda ep: ep.name)
    ]


def installed_as(cls: type) -> tuple[Kind, str] | None:
    """The kind and entry-point name a plugin class is installed under, or None.

    The entry point is the one place a plugin's name is written: messages, cache files and
    logs read it from here. A class installed under several names answers with the first.
    """
    return _installed_as(f"{cls.__module__}:{cls.__qualname__}")


@functools.cache
def _installed_as(target: str) -> tuple[Kind, str] | None:
    for kind in KINDS.values():
        for ep in sorted(_entry_points(kind.group).values(), key=lambda ep: ep.name):
            if ep.value == target:
                return kind, ep.name
    return None


def config_packages() -> list[str]:
    """Python packages that hold extra Hydra config trees (from installed distributions)."""
    return sorted({ep.value for ep in entry_points(group=CONFIG_ENTRY_POINT_GROUP)})


def load(group: str, name: str) -> type[Any]:
    """Import the chosen plugin's class, and only that one."""
    kind = kind_of(group)
    eps = _entry_points(group)
    if name not in eps:
        installed = ", ".join(sorted(eps)) or "none"
        raise PluginError(f"unknown {kind.noun} '{name}' ({group}={name}); installed: {installed}")
    return _load(kind, eps[name])


def load_all(group: str) -> list[tuple[PluginInfo, type[Any] | PluginError]]:
    """Every installed plugin of one kind, sorted by name, with its class or why it fails to
    load (one metadata scan for the whole kind)."""
    kind = kind_of(group)
    loaded: list[tuple[PluginInfo, type[Any] | PluginError]] = []
    for ep in sorted(_entry_points(group).values(), key=lambda ep: ep.name):
        info = PluginInfo(group, ep.name, ep.value, ep.dist.name if ep.dist else "?")
        try:
            loaded.append((info, _load(kind, ep)))
        except PluginError as exc:
            loaded.append((info, exc))
    return loaded


def _load(kind: Kind, ep: EntryPoint) -> type[Any]:
    try:
        cls: type[Any] = ep.load()
    except Exception as exc:  # a broken third-party plugin must not take the CLI down with a trace
        raise PluginError(
            f"{kind.noun} '{ep.name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    config_cls = getattr(cls, "Config", None)
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise PluginError(f"{kind.noun} '{ep.name}' ({ep.value}) has no dataclass `Config`")
    return cls


def build_config(
    group: str,
    name: str | None,
    config_cls: type,
    section: Mapping[str, Any],
    source: str = "",
) -> Any:
    """Validate a config section against a `Config` dataclass and build it.

    `name` is the chosen plugin's name, or None for a settings group such as `trainer`;
    `source` says where the section's values were written (a YAML file), if known. Every
    error is one line naming the full key, e.g. `reward.click.weight`.
    """
    prefix = (
        f"{group}.{name}" if name is not None and group in KINDS and KINDS[group].many else group
    )
    where = f"the '{group}' settings" if name is None else f"{kind_of(group).noun} '{name}'"
    where += f" (set in {source} or an override)" if source else ""
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    hints = typing.get_type_hints(config_cls)
    for key in section:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{prefix}.{close[0]}'?" if close else ""
            raise PluginError(
                f"unknown config key '{prefix}.{key}' for {where}; "
                f"valid keys: {', '.join(fields) or 'none'}{hint}"
            )
    missing = [
        n
        for n, f in fields.items()
        if section.get(n, MANDATORY) == MANDATORY
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise PluginError(f"missing config key '{prefix}.{missing[0]}' for {where}")
    values = {}
    for key, value in section.items():
        if not _matches(value, hints[key]):
            raise PluginError(
                f"config key '{prefix}.{key}' for {where} must be {_type_name(hints[key])}, "
                f"got {value!r}"
            )
        if isinstance(value, float) and math.isnan(value):
            raise PluginError(f"config key '{prefix}.{key}' for {where} must be a number, got nan")
        values[key] = float(value) if hints[key] is float and isinstance(value, int) else value
    return config_cls(**values)


def create(group: str, section: Mapping[str, Any], **dependencies: Any) -> Any:
    """Load the plugin that `section['name']` names, validate its config, and instantiate it."""
    section = dict(section)
    name = section.pop("name", None)
    if not isinstance(name, str):
        raise PluginError(f"config group '{group}' names no plugin: set {group}=<name>")
    cls = load(group, name)
    return instantiate(
        group, name, cls, build_config(group, name, cls.Config, section), **dependencies
    )


# The plugin being built and the entry-point name it was chosen by, for its `Plugin.__init__`.
_BUILDING: ContextVar[tuple[type, Kind, str] | None] = ContextVar("building", default=None)


def instantiate(group: str, name: str, cls: type[Any], config: Any, **dependencies: Any) -> Any:
    """Build `cls(config, **dependencies)` under the entry-point name it was chosen by, which
    the plugin's `name` and `where` then read (a class installed under two names speaks as
    the one chosen)."""
    with _building(cls, kind_of(group), name):
        return cls(config, **dependencies)


@contextmanager
def _building(cls: type, kind: Kind, name: str) -> Iterator[None]:
    token = _BUILDING.set((cls, kind, name))
    try:
        yield
    finally:
        _BUILDING.reset(token)


def being_built(cls: type) -> tuple[Kind, str] | None:
    """The kind and name `instantiate` is building `cls` under, if it is building `cls`."""
    building = _BUILDING.get()
    return building[1:] if building is not None and building[0] is cls else None


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, Mapping)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if typing.get_origin(hint) is None and hasattr(hint, "__name__"):
        return str(hint.__name__)
    return str(hint).replace("typing.", "")


# --- describing and checking installed plugins -----------------------------------------------


@dataclass(frozen=True)
class OptionInfo:
    """One option of a plugin's `Config`: its name, type, default and docstring."""

    name: str
    type: str
    default: str  # the default's repr, or "required"
    doc: str


def describe(group: str, name: str) -> list[OptionInfo]:
    """Every option of the plugin's `Config` (inherited ones first), imported to read them."""
    config_cls = load(group, name).Config
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # an annotation that does not resolve: show it as written
        hints = {}
    docs = field_docs(config_cls)
    return [
        OptionInfo(
            f.name,
            _type_name(hints[f.name]) if f.name in hints else str(f.type),
            _default(f),
            docs.get(f.name, ""),
        )
        for f in dataclasses.fields(config_cls)
        if f.init
    ]


def field_docs(config_cls: type) -> dict[str, str]:
    """Each field's docstring: the string literal written right after it in a class body."""
    docs: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):  # a subclass's docstring wins over its base's
        docs.update(_class_field_docs(cls))
    return docs


def _class_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # built-in or source not shipped
        return {}
    body = ast.parse(source).body[0]
    if not isinstance(body, ast.ClassDef):
        return {}
    docs = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = _string_literal(after)
            if doc is not None:
                docs[node.target.id] = inspect.cleandoc(doc)
    return docs


def _string_literal(node: ast.stmt) -> str | None:
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return node.value.value if isinstance(node.value.value, str) else None
    return None


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "required"


def load_problem(plugin: PluginInfo) -> str | None:
    """Why an installed plugin cannot be used (one line), or None when it loads.

    Each plugin is imported on its own, so one broken package does not hide the others.
    """
    try:
        load(plugin.kind, plugin.name)
    except PluginError as exc:
        return str(exc)
    return None
