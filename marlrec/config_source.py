"""Hydra's config group options, served from the installed plugins' `Config` dataclasses.

Choosing `agent=idqn` composes `agent/idqn` from here: the `idqn` entry point's plugin, imported
only when chosen, whose `Config` declares every option once (type, default, docstring). Listing
the options reads package metadata only. This source comes first on the search path: a YAML file
of the same name (`<group>/<name>.yaml` in marlrec's `conf/` or a plugin package's tree) is laid
over the dataclass defaults, so it can only override them, never declare an option anew.
"""

from __future__ import annotations

import dataclasses
import os
from importlib.resources import files
from typing import Any

import yaml
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import DictConfig, OmegaConf

from marlrec import registry
from marlrec.plugin import COMPOSED_DEFAULT

SCHEME = "marlrec-plugins"
# Settings groups have one option each; their dataclasses load only when composed.
SETTINGS_OPTIONS = {
    "trainer": "default",
    "eval": "default",
    "logger": "tensorboard",
    "privacy": "default",
}


def settings_class(group: str) -> type:
    from marlrec.evaluation.harness import EvalConfig
    from marlrec.privacy import PrivacyConfig
    from marlrec.settings import LoggerConfig, TrainerConfig

    classes = {"trainer": TrainerConfig, "eval": EvalConfig, "logger": LoggerConfig}
    return {**classes, "privacy": PrivacyConfig}[group]


def options(group: str) -> list[str]:
    """The choices of a config group, from package metadata (no plugin code is imported)."""
    if group in SETTINGS_OPTIONS:
        return [SETTINGS_OPTIONS[group]]
    if group in registry.KINDS:
        return [info.name for info in registry.available(group)]
    return []


def yaml_file(group: str, name: str) -> str:
    """The YAML file that `<group>/<name>` composes from, if one overrides the plugin's defaults;
    else an empty string."""
    for package in ("marlrec.conf", *registry.config_packages()):
        try:
            path = files(package) / group / f"{name}.yaml"
        except ModuleNotFoundError:
            continue
        if path.is_file():
            return os.path.abspath(str(path))
    return ""


def yaml_problem(exc: yaml.YAMLError, path: str = "") -> str:
    """A YAML syntax error as one line: `<absolute file>, line L, column C: what is wrong`."""
    mark = getattr(exc, "problem_mark", None)
    where = os.path.abspath(path or (mark.name if mark is not None else "")) or "YAML"
    if mark is not None:
        where += f", line {mark.line + 1}, column {mark.column + 1}"
    what = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{where}: {what}" + (f" ({context})" if context else "")
    return " ".join(text.split())


def defaults(config_cls: type) -> dict[str, Any]:
    """A `Config` dataclass's defaults as plain values; `???` (Hydra's "must be set") if none."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if COMPOSED_DEFAULT in f.metadata:
            value = f.metadata[COMPOSED_DEFAULT]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = registry.MANDATORY
        values[f.name] = list(value) if isinstance(value, tuple) else value
    return values


def node(group: str, name: str) -> tuple[dict[str, Any], str | None]:
    """The composed defaults of `<group>/<name>` and its package (None: the group's own)."""
    if group in SETTINGS_OPTIONS:
        return defaults(settings_class(group)), None
    cls = registry.load(group, name)
    values = overlaid(defaults(cls.Config), group, name)
    if registry.KINDS[group].many:
        # At the global package, so that errors name the full key: reward.<name>.<option>.
        return {group: {name: values}}, "_global_"
    section = {"name": name, **values}
    simulator = getattr(cls, "default_simulator", None)
    if group == "data" and simulator is not None:
        # A logged dataset has no ground-truth tastes: it picks a simulator, which a
        # `simulator=` override still replaces.
        return {"defaults": [{"override /simulator": simulator}], "data": section}, "_global_"
    return section, None


def overlaid(values: dict[str, Any], group: str, name: str) -> dict[str, Any]:
    """`values` with the YAML file of `<group>/<name>`, if any, laid over them.

    In a group selected as a list (`reward`), the file holds its plugin's section under its name,
    as composed at the group's package.
    """
    path = yaml_file(group, name)
    if not path:
        return values
    try:
        overlay = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise registry.PluginError(yaml_problem(exc, path)) from None
    if not isinstance(overlay, DictConfig):
        raise registry.PluginError(f"{path} must hold a mapping of options, not a list")
    if registry.KINDS[group].many:
        stray = [str(k) for k in overlay if k != name]
        if stray:
            noun = registry.KINDS[group].noun
            raise registry.PluginError(
                f"{path}: top-level key '{stray[0]}' is not '{name}'; a {noun}'s options go "
                f"under its name, as {group}.{name}.<option>"
            )
        overlay = overlay.get(name, OmegaConf.create())
    merged = OmegaConf.to_container(OmegaConf.merge(values, overlay))
    assert isinstance(merged, dict)
    return {str(k): v for k, v in merged.items()}


class PluginConfigSource(ConfigSource):
    """The config source behind the `marlrec-plugins://` search path entry."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in ("", *registry.KINDS, *SETTINGS_OPTIONS)

    def is_config(self, config_path: str) -> bool:
        group, _, name = _without_suffix(config_path).partition("/")
        return name in options(group)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        group = config_path.strip("/")
        if group == "":
            wanted = results_filter in (None, ObjectType.GROUP)
            return sorted((*registry.KINDS, *SETTINGS_OPTIONS)) if wanted else []
        if results_filter not in (None, ObjectType.CONFIG):
            return []
        return sorted(options(group))

    def load_config(self, config_path: str) -> ConfigResult:
        group, _, name = _without_suffix(config_path).partition("/")
        if name not in options(group):
            raise ConfigLoadError(f"no plugin config '{config_path}'")
        content, package = node(group, name)
        config = OmegaConf.create(content)
        _open_mappings(config, group, name, package)
        return ConfigResult(
            config=config,
            path=f"{SCHEME}://{group}/{name}",
            provider="marlrec plugins",
            header={"package": package},
        )


def _open_mappings(config: DictConfig, group: str, name: str, package: str | None) -> None:
    """Let mapping options (`env.role_terms`) take new keys: `env.role_terms={diversity:click}`
    on the command line merges into the (often empty) default, which struct mode would refuse."""
    section = config[group] if package == "_global_" else config
    if group in registry.KINDS and registry.KINDS[group].many:
        section = section[name]
    # Keys only: reading the values would resolve interpolations such as ${cache_dir} here.
    for key in map(str, section):
        if OmegaConf.is_dict(OmegaConf.select(section, key, throw_on_resolution_failure=False)):
            OmegaConf.set_struct(section[key], False)


def _without_suffix(config_path: str) -> str:
    path = config_path.strip("/")
    return path.removesuffix(".yaml")
