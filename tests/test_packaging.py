"""The built wheel, installed into a fresh venv, trains from any directory (slow: installs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_from_elsewhere(tmp_path: Path, offline_cache: Path) -> None:
    def run(*cmd: str | Path, cwd: Path = tmp_path) -> None:
        result = subprocess.run(
            [str(c) for c in cmd],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=cli_env(offline_cache),
        )
        assert result.returncode == 0, result.stderr[-3000:]

    # Build from a copy: setuptools writes build metadata into the source tree.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "outputs"))
    run(sys.executable, "-m", "build", "--wheel", "-o", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("marlrec-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", "torch==2.13.0")
    run(venv / "bin" / "pip", "install", "-q", wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(
        venv / "bin" / "marlrec",
        "train",
        "experiment=quick",
        "trainer.max_epochs=1",
        "trainer.show_progress=false",
        cwd=elsewhere,
    )
    assert list(elsewhere.glob("outputs/runs/*/*/metrics.json"))
