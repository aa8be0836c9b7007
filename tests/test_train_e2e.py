"""End to end through the CLI: train, evaluate, recommend, and a multirun sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import cli_env

TINY = [
    "experiment=quick",
    "trainer.max_epochs=3",
    "trainer.epoch_num_env_steps=1500",
    "eval.sessions=200",
]


def marlrec(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "marlrec.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(cache),
        cwd=cwd,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, offline_cache: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    result = marlrec("train", *TINY, f"hydra.run.dir={run_dir}", cache=offline_cache, cwd=run_dir)
    # Bars are on (the default), but stderr is a pipe: no carriage-return redraws in the log.
    assert "\r" not in result.stderr
    return run_dir


def test_run_dir_holds_config_metrics_checkpoint_and_logs(trained_run: Path) -> None:
    assert (trained_run / "config.yaml").is_file()
    assert (trained_run / ".hydra" / "overrides.yaml").is_file()
    for checkpoint in ("last.pt", "best.pt", "train_state.pt"):
        assert (trained_run / "checkpoints" / checkpoint).is_file(), checkpoint
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    assert (trained_run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"agent", "random", "pop"}
    for plot in ("roles.png", "interest_map.png"):
        assert (trained_run / plot).read_bytes()[:4] == b"\x89PNG", plot
    shares = [v for k, v in metrics["eval"]["agent"].items() if k.endswith("/click_share")]
    assert len(shares) == 2 and sum(shares) == pytest.approx(1.0)
    assert metrics["train"]["train_env_steps"] >= 4500
    assert metrics["train"]["stopped_early"] is False  # a flag, not 0.0
    # Epoch 0 is the validation after imitation, before the RL epochs.
    assert [record["epoch"] for record in metrics["history"]] == [0, 1, 2, 3]
    assert metrics["train"]["epochs"] == 3
    # Each role's loss per epoch, for the learning curve's second panel.
    losses = {k for k in metrics["history"][-1] if k.startswith("loss/")}
    assert {k.split("/")[1] for k in losses} == {"relevance", "diversity"}


def test_best_checkpoint_is_the_best_validation(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    best = max(record["valid/NDCG@10"] for record in metrics["history"])
    assert metrics["train"]["best_valid_NDCG@10"] == best
    assert metrics["eval"]["agent"]["valid/NDCG@10"] == pytest.approx(best, abs=1e-6)


def test_trained_agents_beat_the_random_policy(trained_run: Path) -> None:
    rows = json.loads((trained_run / "metrics.json").read_text())["eval"]
    agent, random = rows["agent"], rows["random"]
    assert agent["sim/mean_return"] > random["sim/mean_return"]
    assert agent["test/NDCG@10"] > random["test/NDCG@10"]


def test_evaluate_reproduces_the_saved_figures(trained_run: Path, offline_cache: Path) -> None:
    marlrec("evaluate", f"run_dir={trained_run}", cache=offline_cache, cwd=trained_run)
    (saved,) = (trained_run / "evaluations").glob("*.json")
    again = json.loads(saved.read_text())
    first = json.loads((trained_run / "metrics.json").read_text())["eval"]
    assert again["agent"] == pytest.approx(first["agent"])


def test_recommend_explains_each_item(trained_run: Path, offline_cache: Path) -> None:
    result = marlrec(
        "recommend", f"run_dir={trained_run}", "user=3", "k=5", cache=offline_cache, cwd=trained_run
    )
    assert "top 5 for user 3" in result.stdout
    assert "chosen by the 'relevance' agent" in result.stdout


def test_abtest_of_a_run_against_itself_finds_no_difference(
    trained_run: Path, offline_cache: Path, tmp_path: Path
) -> None:
    """Common random numbers: the same policy in the same sessions, and on the same users'
    held-out items, differs by exactly zero."""
    args = ["abtest", f"run_a={trained_run}", f"run_b={trained_run}", "users=60"]
    marlrec(*args, f"out={tmp_path}", cache=offline_cache, cwd=tmp_path)
    report = json.loads((tmp_path / "abtest.json").read_text())
    assert report["common_random_numbers"] and (tmp_path / "abtest.png").is_file()
    rows = {row["metric"]: row for row in report["comparisons"]}
    sessions = {"return", "clicks", "session length", "diversity", "novelty"}
    held_out = {f"{split} {metric}@10" for split in ("valid", "test") for metric in ("HR", "NDCG")}
    assert set(rows) == sessions | held_out
    assert {rows[name]["over"] for name in held_out} == {"users"}
    first = json.loads((trained_run / "metrics.json").read_text())["eval"]["agent"]
    assert rows["test NDCG@10"]["mean_a"] == pytest.approx(first["test/NDCG@10"], abs=1e-6)
    for row in rows.values():
        assert (row["difference"], row["low"], row["high"], row["p_value"]) == (0, 0, 0, 1)
        assert row["mean_a"] == row["mean_b"] and row["needed"] is None
    again = subprocess.run(
        [sys.executable, "-m", "marlrec.cli", *args, f"out={tmp_path}"],
        capture_output=True,
        text=True,
        env=cli_env(offline_cache),
        cwd=tmp_path,
        timeout=300,
    )
    assert again.returncode != 0 and "exists; choose another out=... or force=true" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_multirun_writes_one_job_per_seed_into_one_dir(tmp_path: Path, offline_cache: Path) -> None:
    sweep = tmp_path / "sweep"
    marlrec(
        "train",
        "-m",
        "seed=0,1",
        "experiment=quick",
        "trainer.show_progress=false",
        "trainer.max_epochs=1",
        "trainer.epoch_num_env_steps=200",
        "trainer.test_episodes=2",
        "eval.sessions=5",
        f"hydra.sweep.dir={sweep}",
        cache=offline_cache,
        cwd=tmp_path,
    )
    jobs = [sweep / "0", sweep / "1"]
    assert all((job / "metrics.json").is_file() for job in jobs)
    assert sorted(OmegaConf.load(job / "config.yaml").seed for job in jobs) == [0, 1]
