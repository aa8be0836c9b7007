"""Hydra's ConfigStore, filled from the installed plugins' `Config` dataclasses.

Every option of a config group is stored once, from its dataclass (names, defaults, and
`???` where the user must choose): `agent=idqn` composes the `idqn` entry point's defaults.
A YAML file of a plugin (`<group>/<name>.yaml` in marlrec's `conf/` or a plugin package's
tree) only selects and overrides: its plugin's defaults are then stored as `<name>_config`
and the file starts with `defaults: [<name>_config, _self_]`, so it extends them. Types and
values are checked against the dataclass once per run, by `marlrec.pipeline.configure`.

Storing the defaults imports every installed plugin when a command composes a config; one
whose import fails is skipped with a one-line warning.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from importlib.resources import files
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from marlrec import registry
from marlrec.plugin import COMPOSED_DEFAULT

# Settings groups: one option each, `group: (option, "module:Class")`. A new group is one
# line here, a `- group: option` line in conf/config.yaml, and its dataclass.
SETTINGS: dict[str, tuple[str, str]] = {
    "trainer": ("default", "marlrec.settings:TrainerConfig"),
    "eval": ("default", "marlrec.evaluation.harness:EvalConfig"),
    "logger": ("tensorboard", "marlrec.settings:LoggerConfig"),
    "privacy": ("default", "marlrec.privacy:PrivacyConfig"),
}
SETTINGS_OPTIONS = {group: option for group, (option, _) in SETTINGS.items()}
SCHEMA_SUFFIX = "_config"  # the stored defaults of a plugin that has a YAML file
PROVIDER = "marlrec"
_warned: set[str] = set()  # entry points already warned about in this process


def settings_class(group: str) -> type:
    module, _, name = SETTINGS[group][1].partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def options(group: str) -> list[str]:
    """The choices of a config group, from package metadata (no plugin code is imported)."""
    if group in SETTINGS_OPTIONS:
        return [SETTINGS_OPTIONS[group]]
    if group in registry.KINDS:
        return [info.name for info in registry.available(group)]
    return []


def yaml_file(group: str, name: str, packages: list[str] | None = None) -> str:
    """The YAML file that `<group>/<name>` composes from, if one overrides the plugin's defaults;
    else an empty string. `packages`: the plugin packages' config trees, if already listed."""
    packages = registry.config_packages() if packages is None else packages
    for package in ("marlrec.conf", *packages):
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


def node(
    group: str,
    name: str,
    config_cls: type,
    simulator: str | None = None,
    choices: dict[str, str | list[str]] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The stored defaults of `<group>/<name>` and their package (None: the group's own);
    `simulator` and `choices` are the plugins a dataset picks by default."""
    values = defaults(config_cls)
    if group in SETTINGS:
        return values, None
    if registry.KINDS[group].many:
        # At the global package, so that errors name the full key: reward.<name>.<option>.
        return {group: {name: values}}, "_global_"
    section = {"name": name, **values}
    picks = {**({"simulator": simulator} if simulator else {}), **(choices or {})}
    if group == "data" and picks:
        # A logged dataset has no ground-truth tastes: it picks a simulator, and the plugins
        # that serve logs; a command-line choice or a preset's override still replaces them.
        overrides = [
            {f"override /{kind}": list(v) if isinstance(v, list) else v}
            for kind, v in picks.items()
        ]
        return {"defaults": overrides, "data": section}, "_global_"
    return section, None


def register() -> None:
    """Store every installed plugin's and settings group's defaults in Hydra's ConfigStore.

    Run again, it forgets what it stored before: plugins may have been installed meanwhile.
    """
    store = ConfigStore.instance()
    packages = registry.config_packages()
    for group in (*registry.KINDS, *SETTINGS):
        store.repo.pop(group, None)
    for group, (option, _) in SETTINGS.items():
        _store(store, group, option, settings_class(group), packages)
    for group in registry.KINDS:
        for info, cls in registry.load_all(group):
            if isinstance(cls, registry.PluginError):
                _warn(info, cls)
                continue
            simulator = getattr(cls, "default_simulator", None)
            choices = getattr(cls, "default_choices", None)
            _store(store, group, info.name, cls.Config, packages, simulator, choices)


def _warn(info: registry.PluginInfo, exc: registry.PluginError) -> None:
    """One line per broken entry point and process: the other plugins remain usable."""
    if info.target not in _warned:
        _warned.add(info.target)
        print(f"marlrec: warning: {exc}", file=sys.stderr)


def _store(
    store: ConfigStore,
    group: str,
    name: str,
    config_cls: type,
    packages: list[str],
    simulator: str | None = None,
    choices: dict[str, str | list[str]] | None = None,
) -> None:
    content, package = node(group, name, config_cls, simulator, choices)
    stored_name = name + SCHEMA_SUFFIX if check_yaml(group, name, packages) else name
    store.store(name=stored_name, node=content, group=group, package=package, provider=PROVIDER)
    config = store.repo[group][f"{stored_name}.yaml"].node
    _open_mappings(config, group, name, package)


def check_yaml(group: str, name: str, packages: list[str] | None = None) -> str:
    """The YAML file of `<group>/<name>`, checked to extend the stored defaults; else ''."""
    path = yaml_file(group, name, packages)
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as stream:
            content = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        raise registry.PluginError(yaml_problem(exc, path)) from None
    content = {} if content is None else content
    if not isinstance(content, dict):
        raise registry.PluginError(f"{path} must hold a mapping of options, not a list")
    schema = name + SCHEMA_SUFFIX
    if schema not in (content.get("defaults") or []):
        raise registry.PluginError(
            f"{path} must extend the plugin's defaults: start it with "
            f"`defaults: [{schema}, _self_]`"
        )
    stray = [str(k) for k in content if k not in ("defaults", name)]
    if group in registry.KINDS and registry.KINDS[group].many and stray:
        noun = registry.KINDS[group].noun
        raise registry.PluginError(
            f"{path}: top-level key '{stray[0]}' is not '{name}'; a {noun}'s options go "
            f"under its name, as {group}.{name}.<option>"
        )
    return path


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
