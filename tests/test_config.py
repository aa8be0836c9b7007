"""Every registered choice composes and validates; config mistakes get one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from marlrec import registry
from marlrec.app import SETTINGS_GROUPS
from marlrec.pipeline import validate
from marlrec.registry import MarlrecError
from tests.conftest import cli_env, compose_config


def _options() -> list[tuple[str, str]]:
    GlobalHydra.instance().clear()
    with initialize_config_module("marlrec.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = [*registry.KINDS, *SETTINGS_GROUPS]
        return [(g, option) for g in groups for option in loader.get_group_options(g)]


OPTIONS = _options()


def test_every_kind_has_a_yaml_for_each_builtin_plugin() -> None:
    yaml_names = {(g, o) for g, o in OPTIONS}
    for group in registry.KINDS:
        for plugin in registry.available(group):
            if plugin.distribution == "marlrec":
                assert (group, plugin.name) in yaml_names, f"conf/{group}/{plugin.name}.yaml"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_registered_choice_composes_and_validates(group: str, option: str) -> None:
    choice = f"[{option}]" if group in ("reward", "baseline") else option
    cfg = compose_config([f"{group}={choice}"])
    validate(cfg)


def test_default_config_selects_one_plugin_per_kind() -> None:
    cfg = compose_config([])
    assert cfg.data.name == "synthetic" and cfg.agent.name == "idqn"
    assert list(cfg.reward) == ["click"] and cfg.device == "auto"


def test_yaml_level_bad_key_is_named() -> None:
    cfg = compose_config(["+agent.learning_rate=0.1"])
    with pytest.raises(MarlrecError, match=r"unknown config key 'agent\.learning_rate'"):
        validate(cfg)


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marlrec.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(cache),
        timeout=120,
    )


def test_unknown_agent_is_one_line_listing_installed_agents(offline_cache: Path) -> None:
    result = run_cli("train", "agent=nonexistent", cache=offline_cache)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        "agent 'nonexistent'" in lines[0] and "installed: dqn, idqn, ippo, mappo, ppo" in lines[0]
    )
    assert "Traceback" not in result.stderr + result.stdout


def test_misspelled_key_is_one_line_naming_it(offline_cache: Path) -> None:
    result = run_cli("train", "trainer.max_epoch=1", cache=offline_cache)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'trainer.max_epoch'" in lines[0] and "'trainer.max_epochs'" in lines[0]
    assert "Traceback" not in result.stderr


def test_wrong_type_in_a_sweep_is_caught_before_any_job(offline_cache: Path) -> None:
    result = run_cli("train", "-m", "agent.hidden=wide,narrow", cache=offline_cache)
    assert result.returncode != 0
    assert "agent.hidden" in result.stderr and "must be int" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_and_usage(offline_cache: Path) -> None:
    assert "usage: marlrec" in run_cli(cache=offline_cache).stdout
    result = run_cli("trian", cache=offline_cache)
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr


@pytest.mark.parametrize("dataset", ["movielens", "csv", "amazon_reviews"])
def test_logged_datasets_default_to_replay_and_the_command_line_wins(dataset: str) -> None:
    assert compose_config([f"data={dataset}"]).simulator.name == "replay"
    chosen = compose_config([f"data={dataset}", "simulator=response_model"])
    assert chosen.simulator.name == "response_model"
    assert compose_config([]).simulator.name == "synthetic"


def test_ml100k_preset_composes_the_benchmarks_strongest_configuration() -> None:
    config = compose_config(["experiment=ml100k", "data.path=somewhere"])
    validate(config)
    assert (config.data.name, config.simulator.name) == ("movielens", "replay")
    assert (config.agent.name, config.env.retrieval) == ("mappo", "ease")
    assert list(config.baseline) == ["random", "pop", "itemknn", "ease"]
    assert compose_config(["experiment=ml100k", "env.retrieval=content"]).env.retrieval == "content"
