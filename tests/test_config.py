"""Every installed plugin composes, validates and builds; config mistakes get one clear line."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from marlrec import config_source, registry
from marlrec.app import register_plugin_configs
from marlrec.pipeline import build, configure
from marlrec.plugin import Plugin
from marlrec.registry import MarlrecError, PluginError
from tests.conftest import SMALL, cli_env, compose_config


def _installed() -> list[tuple[str, str]]:
    """Every installed entry point of every kind, and every settings group's option."""
    plugins = [(g, p.name) for g in registry.KINDS for p in registry.available(g)]
    return plugins + [(g, o) for g, o in config_source.SETTINGS_OPTIONS.items()]


INSTALLED = _installed()
# Options that need a setting the small synthetic run lacks, or that train at construction.
BUILD_OVERRIDES = {
    ("data", "movielens"): ["data.path=ml-100k"],
    ("data", "csv"): ["data.path=ratings.csv"],
    ("data", "amazon_reviews"): ["data.reviews=reviews.jsonl"],
    ("agent", "dqn"): ["env=single"],
    ("agent", "ppo"): ["env=single"],
    ("reward", "revenue"): ["reward.revenue.attribute=topic"],
    ("baseline", "sasrec"): ["baseline.sasrec.epochs=1"],
    ("baseline", "sasrec_bce"): ["baseline.sasrec_bce.epochs=1"],
    ("retrieval", "sasrec"): ["retrieval.epochs=1"],
    ("retrieval", "union"): ["retrieval.members=[{name:ease},{name:sasrec,epochs:1}]"],
}


def test_hydra_lists_exactly_the_installed_plugins() -> None:
    register_plugin_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("marlrec.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        listed = {(g, o) for g in {g for g, _ in INSTALLED} for o in loader.get_group_options(g)}
        groups = set(loader.list_groups("")) - {"hydra"}  # what `marlrec train --help` shows
    assert listed == set(INSTALLED)
    assert groups == {g for g, _ in INSTALLED} | {"experiment", "hparams_search"}


@pytest.mark.parametrize(("group", "name"), INSTALLED, ids=[f"{g}={n}" for g, n in INSTALLED])
def test_every_installed_plugin_composes_validates_and_builds(
    group: str, name: str, offline_cache: Path
) -> None:
    many = group in registry.KINDS and registry.KINDS[group].many
    choice = f"[{name}]" if many else name
    overrides = [f"{group}={choice}", *BUILD_OVERRIDES.get((group, name), [])]
    if group == "data":
        # Reading real files is the dataset tests' job: here the plugin is only constructed.
        run = configure(compose_config(overrides))
        assert isinstance(run.one("data").create(), run.one("data").cls)
        return
    pipeline = build(compose_config([*SMALL, *overrides]))
    if group in registry.KINDS:
        assert name in pipeline.cfg[group] if many else pipeline.cfg[group].name == name


@pytest.mark.parametrize("group", list(registry.KINDS))
def test_a_plugin_is_named_by_its_entry_point_only(group: str) -> None:
    """No class spells its own name: messages and cache files read the entry point's."""
    for info in registry.available(group):
        cls = registry.load(group, info.name)
        assert cls.name is Plugin.name and cls.where is Plugin.where, f"{cls.__name__} in {group}"
        assert registry.installed_as(cls) == (registry.KINDS[group], info.name)
        # Nor do its messages: module functions are handed `self.where`.
        source = inspect.getsource(sys.modules[cls.__module__])
        spelled = f"{registry.KINDS[group].noun} '{info.name}'"
        assert spelled not in source, f"{cls.__module__} spells {spelled}"


def test_a_plugin_speaks_under_its_entry_point_name(tmp_path: Path) -> None:
    data = configure(compose_config(["data=synthetic"])).one("data").create()
    assert (data.name, data.where) == ("synthetic", "dataset 'synthetic'")
    with pytest.raises(PluginError, match=r"^simulator 'replay': horizon must be >= 1"):
        configure(compose_config(["simulator=replay", "simulator.horizon=0"])).one(
            "simulator"
        ).create(data=data.load(seed=0, cache_dir=tmp_path), item_emb=torch.zeros(150, 4))


def test_response_model_caches_under_the_runs_cache_dir() -> None:
    cfg = compose_config(["simulator=response_model", "cache_dir=/somewhere"])
    assert configure(cfg).one("simulator").config.cache_dir == "/somewhere"


def test_composed_defaults_are_the_config_dataclass_defaults() -> None:
    from marlrec.agents.idqn import IndependentDQN

    cfg = compose_config(["agent=idqn"])
    assert configure(cfg).one("agent").config == IndependentDQN.Config()


def test_default_config_selects_one_plugin_per_kind() -> None:
    cfg = compose_config([])
    assert cfg.data.name == "synthetic" and cfg.agent.name == "mappo"
    # Imitation goes on during RL by default, so that RL adds to what it taught.
    assert cfg.trainer.imitation_steps > 0 and cfg.trainer.imitation_steps_per_update > 0
    assert list(cfg.reward) == ["click"] and cfg.device == "auto"


def test_bad_key_is_named_in_full() -> None:
    cfg = compose_config(["+agent.learning_rate=0.1"])
    with pytest.raises(MarlrecError, match=r"unknown config key 'agent\.learning_rate'"):
        configure(cfg)
    cfg = compose_config(["reward=[click,diversity]", "+reward.diversity.wieght=2"])
    with pytest.raises(
        MarlrecError, match=r"'reward\.diversity\.wieght'.*'reward\.diversity\.weight'"
    ):
        configure(cfg)


def test_wrong_type_is_one_line_naming_the_full_key() -> None:
    cfg = compose_config(["reward=[click]", "reward.click.weight=heavy"])
    with pytest.raises(MarlrecError, match=r"'reward\.click\.weight'.*must be float") as err:
        configure(cfg)
    assert "\n" not in str(err.value)


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


@pytest.mark.parametrize("dataset", ["movielens", "csv", "amazon_reviews"])
def test_logged_datasets_default_to_the_strong_configuration(dataset: str) -> None:
    config = compose_config([f"data={dataset}"])
    assert (config.agent.name, config.retrieval.name) == ("mappo", "union")
    assert [m["name"] for m in config.retrieval.members] == ["sasrec", "ease"]
    assert list(config.baseline) == ["random", "pop", "itemknn", "ease", "sasrec"]
    assert config.trainer.imitation_steps_per_update > 0
    # The command line and a preset still choose; the generated catalog keeps EASE candidates.
    chosen = compose_config([f"data={dataset}", "retrieval=ease", "baseline=[pop]"])
    assert (chosen.retrieval.name, list(chosen.baseline)) == ("ease", ["pop"])
    assert compose_config(["experiment=ml100k_cold_users"]).retrieval.name == "ease"
    assert (compose_config([]).retrieval.name, list(compose_config([]).baseline)) == (
        "ease",
        ["random", "pop"],
    )


def test_ml100k_preset_composes_the_benchmarks_strongest_configuration() -> None:
    config = compose_config(["experiment=ml100k", "data.path=somewhere"])
    configure(config)
    assert (config.data.name, config.simulator.name) == ("movielens", "replay")
    assert (config.agent.name, config.retrieval.name) == ("mappo", "union")
    # The pool SASRec and EASE rank best by their mean score; their own scores stay hidden.
    assert [m["name"] for m in config.retrieval.members] == ["sasrec", "ease"]
    assert (config.retrieval.merge, config.retrieval.features) == ("mean", False)
    assert list(config.baseline) == ["random", "pop", "itemknn", "ease", "sasrec"]
    assert config.trainer.max_epochs * config.trainer.epoch_num_env_steps >= 50_000
    assert config.trainer.imitation_steps_per_update > 0
    assert compose_config(["experiment=ml100k", "retrieval=content"]).retrieval.name == "content"
