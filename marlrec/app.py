"""The Hydra app behind `marlrec train`, and the checks that turn config mistakes into one line.

Hydra reports an unknown group choice or a misspelled key as a paragraph; before handing the
command line to Hydra we compose the first job ourselves and say what is wrong in one line.
"""

from __future__ import annotations

import difflib
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import hydra
import yaml
from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from marlrec import config_source, registry
from marlrec.config_source import PluginConfigSource
from marlrec.pipeline import configure
from marlrec.registry import MarlrecError

CONFIG_MODULE = "marlrec.conf"
SETTINGS_GROUPS = ("trainer", "eval", "logger", "privacy", "experiment")
log = logging.getLogger(__name__)
# Hydra flags after which we leave the command line to Hydra alone.
EXPERT_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "--shell-completion",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--package",
    "-p",
    "--resolve",
)


class PluginConfigSearchPath(SearchPathPlugin):
    """Puts every installed plugin's `Config` defaults first (a plugin's YAML file is laid
    over them there), then the YAML trees that plugin packages declare under `marlrec.conf`
    (presets such as `experiment/`)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.prepend(provider="marlrec plugins", path=f"{config_source.SCHEME}://")
        for package in registry.config_packages():
            search_path.append(provider=f"marlrec:{package}", path=f"pkg://{package}")


def register_plugin_configs() -> None:
    """Make Hydra see the plugins' configs; call before composing marlrec's config."""
    Plugins.instance().register(PluginConfigSource)
    Plugins.instance().register(PluginConfigSearchPath)


def compose_config(overrides: list[str]) -> DictConfig:
    """marlrec's config with `overrides`, composed as `marlrec train` would, no run started
    (for benchmarks, tests and notebooks)."""
    register_plugin_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


# Flags that print the composed config, and how many values follow each: the overrides
# beside them are checked as usual.
PRINT_FLAGS = {"--cfg": 1, "-c": 1, "--package": 1, "-p": 1, "--resolve": 0}


def _without_print_flags(args: list[str]) -> list[str]:
    kept, skip = [], 0
    for arg in args:
        if skip:
            skip -= 1
        elif arg in PRINT_FLAGS:
            skip = PRINT_FLAGS[arg]
        elif arg.split("=")[0] not in PRINT_FLAGS:
            kept.append(arg)
    return kept


def preflight(args: list[str]) -> None:
    """Raise a one-line MarlrecError if the first job of this command line would not compose."""
    args = _without_print_flags(args)
    if any(a.split("=")[0] in EXPERT_FLAGS for a in args):
        return
    overrides = [a for a in args if not a.startswith("-")]
    nameless = [o for o in overrides if o.lstrip("+~").startswith("=")]
    if nameless:
        raise MarlrecError(f"override '{nameless[0]}' names no key: write key=value")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise MarlrecError(f"cannot parse the overrides: {_first_line(exc)}") from None
    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for override in parsed:
            _check_choice(override, loader.get_group_options)
        first_job = BasicSweeper.split_arguments(
            [o for o in parsed if not o.is_hydra_override()], None
        )[0][0]
        _check_keys(first_job)
        configure(_compose(first_job))
    GlobalHydra.instance().clear()


def _values(override: Override) -> list[str]:
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    value = override.value()
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _check_choice(override: Override, options_of: Any) -> None:
    group = override.key_or_group
    if group not in registry.KINDS and group not in SETTINGS_GROUPS:
        return
    if override.is_delete() or override.value() is None:
        return
    options = options_of(group)
    noun = registry.KINDS[group].noun if group in registry.KINDS else f"{group} preset"
    for value in _values(override):
        if value not in options:
            raise MarlrecError(
                f"unknown {noun} '{value}' in '{override.input_line}'; "
                f"installed: {', '.join(options)}"
            )


def _check_keys(first_job: list[str]) -> None:
    """Name a misspelled key, and the closest real one, before Hydra's own paragraph."""
    parsed = OverridesParser.create().parse_overrides(first_job)
    group_choices = [
        o.input_line
        for o in parsed
        if o.key_or_group in registry.KINDS or o.key_or_group in SETTINGS_GROUPS
    ]
    base = _compose(group_choices)
    for override in parsed:
        key = override.key_or_group
        if override.is_add() or override.is_delete() or override.input_line in group_choices:
            continue
        if OmegaConf.select(base, key, default=_ABSENT) is _ABSENT:
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(base, parent_key) if parent_key else base
            if isinstance(parent, DictConfig) and not OmegaConf.is_struct(parent):
                continue  # a mapping option such as env.role_terms takes any key
            siblings = list(parent.keys()) if isinstance(parent, DictConfig) else []
            close = difflib.get_close_matches(leaf, [str(s) for s in siblings], n=1)
            hint = (
                f"; did you mean '{'.'.join(filter(None, [parent_key, close[0]]))}'?"
                if close
                else ""
            )
            raise MarlrecError(
                f"unknown config key '{key}'{hint} (use +{key}=... to add a new key)"
            )


_ABSENT = object()


def _compose(overrides: list[str]) -> DictConfig:
    try:
        cfg = compose("config", overrides=overrides)
    except yaml.YAMLError as exc:  # a preset's YAML that does not parse
        raise MarlrecError(config_source.yaml_problem(exc)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise MarlrecError(_first_line(exc)) from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise MarlrecError(f"{_first_line(exc)} (at {_failing_key(cfg)})") from None
    return cfg


def _failing_key(node: DictConfig, prefix: str = "") -> str:
    """The first key whose interpolation does not resolve."""
    for key in map(str, node):
        try:
            value = node[key]
        except OmegaConfBaseException:
            return f"{prefix}{key}"
        if isinstance(value, DictConfig):
            found = _failing_key(value, f"{prefix}{key}.")
            if found:
                return found
    return ""


def _first_line(exc: BaseException) -> str:
    """The message of `exc`, or of the error it wraps when its own is empty, on one line,
    with the full key OmegaConf names."""
    while not str(exc).strip() and exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split("\n")[:2]).strip()
    full_key = getattr(exc, "full_key", None)
    if full_key and full_key not in text:
        text += f" (at {full_key})"
    return " ".join(text.split()) or type(exc).__name__


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def train_app(cfg: DictConfig) -> float:
    """One training job; returns the agent's validation NDCG for sweepers that optimise it.

    With `trainer.resume=true` the job continues the run in its run dir (`hydra.run.dir`) with
    the config saved there.
    """
    from marlrec.pipeline import settings
    from marlrec.run import AGENT_ROW, resumable_config, train

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        cfg = resumable_config(cfg, run_dir, list(hydra_cfg.overrides.task))
        metrics = train(cfg, run_dir)
    except MarlrecError as exc:
        _fail(str(exc))
    except Exception as exc:  # a plugin's bug: named in one line, its trace kept in the log
        message = (str(exc).strip().splitlines() or [""])[0]
        _fail(f"{culprit(exc)} failed: {type(exc).__name__}: {message}".rstrip(": "), exc)
    eval_cfg = settings(cfg)[1]
    # NaN when `eval.metrics` leaves NDCG out: a sweep then has nothing to optimise.
    return float(metrics["eval"][AGENT_ROW].get(eval_cfg.key("valid", "ndcg"), float("nan")))


def culprit(exc: BaseException) -> str:
    """Who raised `exc`: the innermost plugin on its traceback (`reward 'x'`), else the run."""
    from marlrec.plugin import Plugin

    found = "the run"
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, Plugin):
            found = owner.where
    return found


def _fail(line: str, exc: BaseException | None = None) -> NoReturn:
    """End the job with one line on stderr; the run's log (train.log) records it, and the
    trace where there is one."""
    log.error(line)
    if exc is not None:
        trace = "".join(traceback.format_exception(exc))
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(log.makeRecord(log.name, logging.ERROR, "", 0, trace, (), None))
    print(f"marlrec: {line}", file=sys.stderr)
    raise SystemExit(2)
