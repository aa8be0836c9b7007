"""A `marlrec train` killed at any point, mid-write included, resumes to the results of a run
never interrupted: no temporary file left, no TensorBoard point twice, no config mix-up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from marlrec.io import KILL_DURING_WRITE, TEMP_SUFFIX, atomic_write, remove_temp_files
from marlrec.registry import MarlrecError
from marlrec.run import resumable_config
from tests.conftest import cli_env, compose_config
from tests.test_resume import flatten

FAST = [
    "experiment=quick",
    "data.n_users=60",
    "data.n_items=200",
    "trainer.show_progress=false",
    "trainer.max_epochs=2",
    "trainer.epoch_num_env_steps=64",
    "trainer.collect_num_env_steps=32",
    "trainer.batch_size=32",
    "trainer.buffer_size=1000",
    "trainer.test_episodes=2",
    "trainer.imitation_steps=20",
    "trainer.imitation_steps_per_update=1",
    "eval.sessions=5",
    "agent.hidden=16",
    "baseline=[random]",
]
RESUME = ["trainer.resume=true", "trainer.show_progress=false"]
# Figures and TensorBoard tags that measure wall-clock time, not what was learned.
TIMINGS = ("train_seconds", "train_env_steps_per_second", "imitation_seconds")
TIMED_TAGS = ("time", "speed")


def start(run_dir: Path, cache: Path, *overrides: str, kill_in: str = "") -> subprocess.Popen:
    """`marlrec train` in a subprocess; `kill_in="NAME:N"` kills it mid-way through its
    N-th write of NAME."""
    env = cli_env(cache)
    env.pop(KILL_DURING_WRITE, None)
    if kill_in:
        env[KILL_DURING_WRITE] = kill_in
    command = [sys.executable, "-m", "marlrec.cli", "train", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        command, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def finish(process: subprocess.Popen, killed: bool = False) -> str:
    output = process.communicate(timeout=600)[0].decode(errors="replace")
    expected = -signal.SIGKILL if killed else 0
    assert process.returncode == expected, output[-3000:]
    return output


def kill_after_first_epoch(process: subprocess.Popen, run_dir: Path) -> None:
    """SIGKILL as soon as the first epoch's training state is saved (training goes on)."""
    state = run_dir / "checkpoints" / "train_state.pt"
    deadline = time.monotonic() + 600
    while not state.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    finish(process, killed=True)


def temp_files(run_dir: Path) -> list[Path]:
    return list(run_dir.rglob(f"*{TEMP_SUFFIX}"))


def scalars(run_dir: Path) -> Counter[tuple[str, int, float | None]]:
    """Every TensorBoard point the run's event files hold: (tag, step, value), timings
    without their value."""
    points: Counter[tuple[str, int, float | None]] = Counter()
    for events in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                timed = any(word in value.tag for word in TIMED_TAGS)
                points[(value.tag, event.step, None if timed else value.simple_value)] += 1
    return points


def assert_same_results(resumed: Path, uninterrupted: Path) -> None:
    expected = json.loads((uninterrupted / "metrics.json").read_text())
    got = json.loads((resumed / "metrics.json").read_text())
    assert got["eval"] == expected["eval"]
    # Epoch 0 (validated after imitation), then the two RL epochs.
    assert got["history"] == expected["history"] and len(got["history"]) == 3
    assert got["retrieval"] == expected["retrieval"]
    for key, value in expected["train"].items():
        if key not in TIMINGS:
            assert got["train"][key] == value, key
    # The same points, each once: nothing the killed runs logged after their last state stays.
    assert scalars(resumed) == scalars(uninterrupted)
    assert not temp_files(resumed)
    for name in ("best.pt", "last.pt"):
        got_agent, expected_agent = (
            flatten(torch.load(d / "checkpoints" / name, weights_only=False))
            for d in (resumed, uninterrupted)
        )
        assert got_agent.keys() == expected_agent.keys()
        for key, value in expected_agent.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got_agent[key], value), (name, key)
            else:
                assert got_agent[key] == value, (name, key)


def test_a_run_killed_while_writing_its_training_state_resumes_exactly(
    tmp_path: Path, offline_cache: Path
) -> None:
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full = start(full_dir, offline_cache, *FAST)
    # Epoch 1 is saved; the run dies halfway through writing epoch 2's training state.
    finish(start(killed_dir, offline_cache, *FAST, kill_in="train_state.pt:2"), killed=True)
    (partial,) = temp_files(killed_dir)
    assert partial.name.startswith(".train_state.pt.") and partial.stat().st_size > 0
    assert not (killed_dir / "metrics.json").exists()

    output = finish(start(killed_dir, offline_cache, *RESUME))
    assert "resuming after epoch 1" in output
    finish(full)
    assert_same_results(killed_dir, full_dir)


@pytest.mark.slow
def test_a_run_killed_at_every_stage_resumes_exactly(tmp_path: Path, offline_cache: Path) -> None:
    full_dir, run_dir = tmp_path / "full", tmp_path / "killed"
    full = start(full_dir, offline_cache, *FAST)
    # Imitation done, its figures half-written: no training state yet, the run starts over.
    finish(start(run_dir, offline_cache, *FAST, kill_in="imitation.json:1"), killed=True)
    assert not (run_dir / "checkpoints" / "train_state.pt").exists()
    # Killed during epoch 2, after epoch 1's checkpoint.
    kill_after_first_epoch(start(run_dir, offline_cache, *RESUME), run_dir)
    # Killed while writing the agent after epoch 2, then its training state.
    for write in ("last.pt:1", "train_state.pt:1"):
        finish(start(run_dir, offline_cache, *RESUME, kill_in=write), killed=True)
        assert temp_files(run_dir)
    # Trained to the end and evaluated, killed while writing the final figures.
    finish(start(run_dir, offline_cache, *RESUME, kill_in="metrics.json:1"), killed=True)
    assert not (run_dir / "metrics.json").exists()

    output = finish(start(run_dir, offline_cache, *RESUME))
    assert "resuming after epoch 2" in output
    finish(full)
    assert_same_results(run_dir, full_dir)


def test_a_killed_write_leaves_a_recognisable_temp_file_that_a_restart_removes(
    tmp_path: Path,
) -> None:
    target = tmp_path / "checkpoints" / "state.pt"
    script = (
        "import sys; from pathlib import Path; from marlrec.io import atomic_write; "
        "atomic_write(Path(sys.argv[1]), lambda f: f.write(b'x' * 4096))"
    )
    env = {**cli_env(tmp_path), KILL_DURING_WRITE: "state.pt:1"}
    killed = subprocess.run([sys.executable, "-c", script, str(target)], env=env)
    assert killed.returncode == -signal.SIGKILL
    (partial,) = temp_files(tmp_path)
    assert partial.parent == target.parent and partial.name.startswith(".state.pt.")
    assert partial.stat().st_size == 2048 and not target.exists()

    atomic_write(tmp_path / "kept.tmp", lambda f: f.write(b"a user's file"))
    assert remove_temp_files(tmp_path) == [partial]
    assert not partial.exists() and (tmp_path / "kept.tmp").read_bytes() == b"a user's file"


def _save_config(run_dir: Path, overrides: list[str]) -> None:
    run_dir.mkdir(exist_ok=True)
    saved = compose_config(overrides)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))


def _resume(run_dir: Path, overrides: list[str]) -> Any:
    command = [*overrides, "trainer.resume=true"]
    return resumable_config(compose_config(command), run_dir, command, compose_config([]))


def test_resuming_a_dir_without_config_is_refused_in_one_line(
    tmp_path: Path, offline_cache: Path
) -> None:
    with pytest.raises(MarlrecError, match=r"cannot resume .*holds no config\.yaml"):
        _resume(tmp_path, [])
    empty = tmp_path / "empty"
    empty.mkdir()
    process = start(empty, offline_cache, *RESUME)
    output = finish_failed(process)
    assert output.startswith("marlrec: cannot resume") and "config.yaml" in output
    assert not list(empty.rglob("*.pt")) and not (empty / "metrics.json").exists()


def finish_failed(process: subprocess.Popen) -> str:
    output = process.communicate(timeout=600)[0].decode(errors="replace").strip()
    assert process.returncode == 2, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("marlrec:")]
    assert len(lines) == 1 and "Traceback" not in output, output[-3000:]
    return lines[0]


def test_a_conflicting_resume_names_exactly_the_keys_this_command_sets(tmp_path: Path) -> None:
    _save_config(tmp_path, [*FAST, "agent.lr=0.01"])
    with pytest.raises(MarlrecError) as error:
        _resume(tmp_path, ["agent.lr=0.5", "trainer.max_epochs=2", "seed=0"])
    message = str(error.value)
    # trainer.max_epochs and seed agree; data.n_users and the rest were never passed.
    assert "its config has agent.lr=0.01, this command agent.lr=0.5;" in message
    assert "max_epochs" not in message and "n_users" not in message and "seed" not in message
    assert "\n" not in message

    # A preset sets keys too: those it sets differently are named, each of them.
    _save_config(tmp_path, ["agent.lr=0.01"])
    with pytest.raises(MarlrecError) as error:
        _resume(tmp_path, ["experiment=quick", "agent.lr=0.01"])
    message = str(error.value)
    for key in ("trainer.max_epochs", "trainer.epoch_num_env_steps", "eval.sessions"):
        assert f"{key}=" in message
    assert "agent.lr" not in message

    # Agreeing overrides, or none: the saved config goes on, the free keys from this command.
    _save_config(tmp_path, [*FAST, "agent.lr=0.01"])
    adopted = _resume(tmp_path, ["agent.lr=0.01", "trainer.show_progress=true"])
    assert adopted.agent.lr == 0.01 and adopted.data.n_users == 60
    assert adopted.trainer.show_progress is True and adopted.trainer.resume is True
