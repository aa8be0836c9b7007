"""A killed `marlrec train`, resumed with trainer.resume=true, ends where an unbroken run ends."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from marlrec import registry
from marlrec.pipeline import Pipeline
from marlrec.registry import MarlrecError
from marlrec.run import resumable_config
from marlrec.settings import LoggerConfig, TrainerConfig, TrainRun
from marlrec.training.imitation import imitate
from marlrec.training.loop import VALID_METRIC, fit
from tests.conftest import cli_env, compose_config

CPU = torch.device("cpu")

TINY = [
    "experiment=quick",
    "data.n_users=60",
    "data.n_items=200",
    "trainer.show_progress=false",
    "trainer.max_epochs=3",
    "trainer.epoch_num_env_steps=96",
    "trainer.collect_num_env_steps=32",
    "trainer.batch_size=32",
    "trainer.test_episodes=2",
    "eval.sessions=5",
    "agent.hidden=16",
    "baseline=[random]",
    "trainer.imitation_steps_per_update=1",  # imitation during RL resumes exactly too
]
# Figures that depend on wall-clock time, not on what was learned.
TIMINGS = ("train_seconds", "train_env_steps_per_second", "imitation_seconds")


def train_command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "marlrec.cli", "train", *overrides, f"hydra.run.dir={run_dir}"]


@pytest.mark.slow  # tests/test_faults.py kills and resumes a smaller run in CI
def test_killed_run_resumes_to_the_same_final_metrics(tmp_path: Path, offline_cache: Path) -> None:
    env = cli_env(offline_cache)
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True, "env": env}
    full = subprocess.Popen(train_command(full_dir, *TINY), cwd=tmp_path, **quiet)
    killed = subprocess.Popen(train_command(killed_dir, *TINY), cwd=tmp_path, **quiet)
    state = killed_dir / "checkpoints" / "train_state.pt"
    deadline = time.monotonic() + 600
    while not state.is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    _, killed_err = killed.communicate()
    assert killed.returncode == -signal.SIGKILL, killed_err[-3000:]
    assert state.is_file() and not (killed_dir / "metrics.json").exists()

    # The documented command: the run dir's saved config, nothing else repeated.
    resumed = subprocess.run(
        train_command(killed_dir, "trainer.resume=true", "trainer.show_progress=false"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stdout + resumed.stderr
    _, full_err = full.communicate(timeout=600)
    assert full.returncode == 0, full_err[-3000:]

    uninterrupted = json.loads((full_dir / "metrics.json").read_text())
    continued = json.loads((killed_dir / "metrics.json").read_text())
    assert continued["eval"] == uninterrupted["eval"]
    assert continued["history"] == uninterrupted["history"]
    assert len(continued["history"]) == 4  # epoch 0 (after imitation), then 3 RL epochs
    for key, value in uninterrupted["train"].items():
        if key not in TIMINGS:
            assert continued["train"][key] == value, key
    assert (killed_dir / "learning_curve.png").is_file()


def test_resume_takes_the_saved_config_and_refuses_a_different_one(tmp_path: Path) -> None:
    saved = compose_config([*TINY, "agent.lr=0.01"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))
    defaults = compose_config([])
    bare = compose_config(["trainer.resume=true"])
    adopted = resumable_config(bare, tmp_path, ["trainer.resume=true"], defaults)
    assert adopted.agent.lr == 0.01 and adopted.trainer.resume is True
    assert adopted.trainer.max_epochs == 3

    same = compose_config([*TINY, "agent.lr=0.01", "trainer.resume=true"])
    resumed = resumable_config(same, tmp_path, [*TINY, "trainer.resume=true"], defaults)
    assert resumed.agent.lr == 0.01
    different = compose_config([*TINY, "agent.lr=0.5", "trainer.resume=true"])
    with pytest.raises(MarlrecError, match=r"agent\.lr=0\.01.*agent\.lr=0\.5"):
        resumable_config(different, tmp_path, ["agent.lr=0.5", "trainer.resume=true"], defaults)


def test_without_resume_the_command_line_config_stands(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(["agent.lr=0.5"])))
    fresh = compose_config(TINY)
    assert resumable_config(fresh, tmp_path, TINY, compose_config([])) is fresh


class Interrupted(Exception):
    """Stands in for a kill after an epoch's training state was written, while the next
    epoch's checkpoint is (the agent is written before the training state)."""


def _fit(pipeline: Pipeline, agent_name: str, run: TrainRun) -> tuple[Any, dict[str, float]]:
    agent = registry.create("agent", {"name": agent_name}, spec=pipeline.env.spec, device=CPU)
    return agent, fit(agent, pipeline.env, run)


def _weights(agent: Any) -> dict[str, torch.Tensor]:
    return {k: v for k, v in flatten(agent.state_dict()).items() if isinstance(v, torch.Tensor)}


def flatten(state: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(state, dict):
        return {prefix: state}
    flat: dict[str, Any] = {}
    for key, sub in state.items():
        flat.update(flatten(sub, f"{prefix}{key}."))
    return flat


def _run(tmp_path: Path, name: str, resume: bool, **hooks: Any) -> TrainRun:
    trainer = TrainerConfig(
        max_epochs=3,
        epoch_num_env_steps=32,
        collect_num_env_steps=16,
        batch_size=16,
        buffer_size=400,
        num_train_envs=2,
        test_episodes=2,
        resume=resume,
        show_progress=False,
    )
    return TrainRun(
        trainer=trainer,
        logger=LoggerConfig(interval_env_steps=16),
        seed=0,
        writer=SummaryWriter(str(tmp_path / name)),
        save_checkpoint=hooks.pop("save_checkpoint", lambda epoch: None),
        save_best=lambda: None,
        validate=lambda: 0.0,
        state_path=tmp_path / f"{name}.pt",
        **hooks,
    )


@pytest.mark.parametrize("agent_name", ["idqn", "ippo"])
def test_every_agent_resumes_exactly_in_process(
    small_pipeline: Pipeline, tmp_path: Path, agent_name: str
) -> None:
    if agent_name not in {info.name for info in registry.available("agent")}:
        pytest.skip(f"agent {agent_name} is not installed")
    torch.manual_seed(0)
    np.random.seed(0)
    uninterrupted = _run(tmp_path, "full", resume=False)
    first, summary = _fit(small_pipeline, agent_name, uninterrupted)

    def interrupt(epoch: int) -> None:
        if epoch == 2:  # epoch 1's training state is saved, epoch 2's agent is not
            raise Interrupted

    torch.manual_seed(0)
    np.random.seed(0)
    with pytest.raises(Interrupted):
        _fit(small_pipeline, agent_name, _run(tmp_path, "cut", False, save_checkpoint=interrupt))
    # Other initial weights and RNG draws: everything that matters must come from the state.
    torch.manual_seed(123)
    np.random.seed(123)
    resumed = _run(tmp_path, "cut", resume=True)
    second, again = _fit(small_pipeline, agent_name, resumed)
    for run in (uninterrupted, resumed):
        run.writer.close()
    assert resumed.history == uninterrupted.history and len(resumed.history) == 3
    assert again["train_env_steps"] == summary["train_env_steps"]
    assert again["best_test_return"] == summary["best_test_return"]
    expected, weights = _weights(first), _weights(second)
    assert expected and expected.keys() == weights.keys()
    assert all(torch.equal(expected[k], weights[k]) for k in expected)


def test_a_run_resumed_after_epoch_0_keeps_it_as_the_best_without_validating_it_again(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    """Imitation validates best (epoch 0); the run is cut after epoch 1 and resumed, as
    `marlrec train` resumes it: from the saved state, without imitating again."""
    scores = [0.5, 0.3, 0.2, 0.1]  # by position in the history: epochs 0, 1, 2, 3
    validated: dict[str, list[int]] = {}

    def scored(run: TrainRun, name: str) -> TrainRun:
        def validate() -> float:
            validated.setdefault(name, []).append(len(run.history))
            return scores[len(run.history)]

        run.trainer = dataclasses.replace(run.trainer, imitation_steps=3)
        run.validate = validate
        return run

    def imitated_agent(run: TrainRun) -> Any:
        torch.manual_seed(0)
        np.random.seed(0)
        agent = registry.create("agent", {"name": "idqn"}, spec=small_pipeline.env.spec, device=CPU)
        imitate(agent, small_pipeline.env, run)
        return agent

    uninterrupted = scored(_run(tmp_path, "full", resume=False), "full")
    first = imitated_agent(uninterrupted)
    summary = fit(first, small_pipeline.env, uninterrupted)

    def interrupt(epoch: int) -> None:
        if epoch == 2:
            raise Interrupted

    cut = scored(_run(tmp_path, "cut", False, save_checkpoint=interrupt), "cut")
    with pytest.raises(Interrupted):
        fit(imitated_agent(cut), small_pipeline.env, cut)
    torch.manual_seed(123)
    np.random.seed(123)
    resumed = scored(_run(tmp_path, "cut", resume=True), "resumed")
    second = registry.create("agent", {"name": "idqn"}, spec=small_pipeline.env.spec, device=CPU)
    again = fit(second, small_pipeline.env, resumed)
    for run in (uninterrupted, cut, resumed):
        run.writer.close()

    assert [r["epoch"] for r in uninterrupted.history] == [0, 1, 2, 3]
    assert [r[VALID_METRIC] for r in uninterrupted.history] == scores
    assert resumed.history == uninterrupted.history
    # Epoch 0 was validated once, before the cut; the resumed run validated epochs 2 and 3.
    assert validated["cut"][0] == 0 and validated["resumed"] == [2, 3]
    assert again["best_valid_epoch"] == summary["best_valid_epoch"] == 0.0
    assert again["best_valid_NDCG@10"] == 0.5 and again["epochs"] == summary["epochs"] == 3.0
    assert again["train_env_steps"] == summary["train_env_steps"]
    expected, weights = _weights(first), _weights(second)
    assert expected and expected.keys() == weights.keys()
    assert all(torch.equal(expected[k], weights[k]) for k in expected)
