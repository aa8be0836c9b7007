"""Hyperparameter search (`hydra/sweeper=optuna`, `hparams_search=...`) and multirun jobs on Ray
(`hydra/launcher=ray`), end to end through the CLI on the small synthetic preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from hydra_plugins.marlrec_sweeps.optuna_sweeper import OptunaSweeper, search_space
from marlrec.app import CONFIG_MODULE, register_plugin_configs
from tests.conftest import cli_env

# Trials as small as a run gets: the search, not the agent, is under test.
TINY = [
    "data.n_users=120",
    "data.n_items=300",
    "trainer.show_progress=false",
    "trainer.max_epochs=1",
    "trainer.epoch_num_env_steps=100",
    "trainer.imitation_steps=10",
    "trainer.test_episodes=2",
    "eval.sessions=5",
]


def train(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = cli_env(cache)
    env.pop("RAY_ADDRESS", None)  # a local Ray instance, never a cluster the machine knows
    result = subprocess.run(
        [sys.executable, "-m", "marlrec.cli", "train", "-m", *args, *TINY],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def agent_row(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())["eval"]["agent"]


def test_search_finds_the_best_valid_trial_and_resumes(tmp_path: Path, offline_cache: Path) -> None:
    train("hparams_search=quick", "hydra.sweeper.n_trials=2", cache=offline_cache, cwd=tmp_path)
    sweep = tmp_path / "outputs" / "optuna" / "quick"
    storage = f"sqlite:///{tmp_path / 'outputs' / 'optuna' / 'quick.db'}"
    first = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert first == ["0", "1"]
    written = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    # The same command with a larger budget continues the study: one more trial, no rerun.
    train("hparams_search=quick", "hydra.sweeper.n_trials=3", cache=offline_cache, cwd=tmp_path)
    study = optuna.load_study(study_name="quick", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == written
    valid = {t.number: agent_row(sweep / str(t.number))["valid/NDCG@10"] for t in study.trials}
    assert {t.number: t.value for t in study.trials} == valid
    # The sampled values reached the trials' configs.
    for trial in study.trials:
        config = OmegaConf.load(sweep / str(trial.number) / "config.yaml")
        assert config.agent.lr == pytest.approx(trial.params["agent.lr"])
        assert config.agent.hidden == trial.params["agent.hidden"]

    best_number = max(valid, key=lambda n: valid[n])
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["trial"] == best_number and best["value"] == valid[best_number]
    assert f"agent.hidden={study.trials[best_number].params['agent.hidden']}" in best["overrides"]
    reported = json.loads((sweep / "best_metrics.json").read_text())
    row = agent_row(sweep / str(best_number))
    assert reported["valid"]["valid/NDCG@10"] == row["valid/NDCG@10"]
    assert reported["test"]["test/NDCG@10"] == row["test/NDCG@10"]
    assert not any(k.startswith("test/") for k in reported["valid"])


def test_two_jobs_run_on_a_local_ray_instance(tmp_path: Path, offline_cache: Path) -> None:
    pytest.importorskip("ray")
    sweep = tmp_path / "sweep"
    train(
        "hydra/launcher=ray",
        "hydra.launcher.num_cpus=2",
        "seed=0,1",
        "experiment=quick",
        f"hydra.sweep.dir={sweep}",
        cache=offline_cache,
        cwd=tmp_path,
    )
    jobs = [sweep / "0", sweep / "1"]
    assert sorted(OmegaConf.load(job / "config.yaml").seed for job in jobs) == [0, 1]
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        # One thread per job: the CPU Ray reserved for it, so two jobs fit two cores.
        assert metrics["threads"] == 1
        assert 0.0 <= metrics["eval"]["agent"]["valid/NDCG@10"] <= 1.0


@pytest.mark.parametrize(
    ("preset", "experiment", "agent"),
    [("quick", "quick", "mappo"), ("ml100k_mappo", "ml100k", "mappo")],
)
def test_presets_compose_a_search_of_the_agent_they_name(
    preset: str, experiment: str, agent: str
) -> None:
    register_plugin_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose("config", [f"hparams_search={preset}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.runtime.choices.experiment == experiment and cfg.agent.name == agent
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.study_name == preset
    assert sweeper.metric == "valid/NDCG@10" and sweeper.storage == f"outputs/optuna/{preset}.db"
    space, fixed = search_space(OmegaConf.to_container(sweeper.params), [])
    assert fixed == [] and set(space) == set(sweeper.params)
    assert all(key.removeprefix("agent.") in cfg.agent for key in space)


def test_search_space_reads_hydra_sweep_syntax_and_the_command_line_wins() -> None:
    params = {
        "agent.lr": "tag(log, interval(1e-5, 1e-3))",
        "agent.hidden": "choice(64, 128)",
        "agent.n_step": "range(1, 7, 2)",
        "agent.gamma": "0.9",
        "agent.target_update_freq": "tag(int, log, interval(10, 1000))",
    }
    space, fixed = search_space(params, ["agent.gamma=interval(0.5, 0.9)", "seed=3"])
    lr, hidden, n_step, gamma = (space[k] for k in list(params)[:4])
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-3, True)
    assert hidden.choices == (64, 128)
    assert (n_step.low, n_step.high, n_step.step) == (1, 5, 2)
    assert (gamma.low, gamma.high, gamma.log) == (0.5, 0.9, False)
    target = space["agent.target_update_freq"]
    assert isinstance(target, optuna.distributions.IntDistribution)
    assert (target.low, target.high, target.log) == (10, 1000, True)
    assert fixed == ["seed=3"]


def sweeper(tmp_path: Path, **options: object) -> OptunaSweeper:
    settings: dict = {
        "study_name": "s",
        "storage": str(tmp_path / "s.db"),
        "metric": "valid/NDCG@10",
        "policy": "agent",
        "direction": "maximize",
        "n_trials": 3,
        "n_jobs": 1,
        "sampler": "tpe",
        "seed": 0,
        **options,
    }
    found = OptunaSweeper(**settings)
    found.sweep_dir = tmp_path / "sweep"
    return found


def test_a_search_never_selects_on_test(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        sweeper(tmp_path, metric="test/NDCG@10")._check_options()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hydra.sweeper.metric must be a validation metric" in err[0]


def test_trials_a_killed_search_left_running_run_again(tmp_path: Path) -> None:
    search = sweeper(tmp_path)
    study = search._study()
    done = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(done, 0.5)
    killed = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # never told

    search._retry_stale(study)
    assert study.trials[killed.number].state.name == "FAIL"
    assert search._done(study) == 1  # the killed trial does not count: its retry will
    retry = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert retry.params == killed.params


def test_a_new_study_refuses_a_sweep_dir_holding_other_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    search = sweeper(tmp_path)
    (search.sweep_dir / "0").mkdir(parents=True)
    (search.sweep_dir / "0" / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit):
        search._study()
    assert "holds runs of another search" in capsys.readouterr().err
    assert os.listdir(search.sweep_dir) == ["0"]
