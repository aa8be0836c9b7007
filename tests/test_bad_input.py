"""Bad input, one line each: every mistake a user can make on the command line, in a config
or in a data file exits non-zero with a single line naming the file and line or the key.

Most cases fail while the config is composed and checked, before anything is built or written.
Errors covered elsewhere, and counted with these: tests/test_config.py (unknown plugin, misspelled
key, wrong type, sweeps), tests/test_registry.py (plugins that fail to load),
tests/test_dataset_errors.py, tests/test_csv_dataset.py and tests/test_amazon_dataset.py (data
files: missing, empty, truncated, malformed rows, bad encodings, duplicated ids).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from marlrec.app import preflight, register_plugin_configs
from marlrec.pipeline import configure
from marlrec.progress import progress_bar
from tests.conftest import ML100K, REPO, cli_env, compose_config
from tests.test_movielens import write_csv_family

# --- defects found when tried as a new user would ------------------------------------------


@pytest.mark.parametrize(
    "data", [["data=movielens", f"data.path={ML100K}"], ["data=csv", "data.path=ratings.csv"]]
)
def test_quick_preset_works_with_any_dataset(data: list[str]) -> None:
    register_plugin_configs()
    preflight(["experiment=quick", *data])  # composes and validates, as `marlrec train` does
    run = configure(compose_config(["experiment=quick", *data]))
    assert run.trainer.max_epochs == 2 and run.one("data").name == data[0].split("=")[1]


def test_quick_preset_keeps_the_synthetic_catalog_small() -> None:
    run = configure(compose_config(["experiment=quick"]))
    assert (run.one("data").config.n_users, run.one("data").config.n_items) == (200, 400)


@pytest.mark.parametrize(
    "form", ["env.role_terms={diversity:diversity}", "env.role_terms.diversity=diversity"]
)
def test_role_terms_as_documented(form: str) -> None:
    overrides = [form, "reward=[click,diversity]", "env.role_mix=0.5"]
    register_plugin_configs()
    preflight(overrides)
    run = configure(compose_config(overrides))
    assert run.one("env").config.role_terms == {"diversity": "diversity"}


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bars_only_on_a_terminal(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written to a log file, a live bar is a flood of carriage returns: it is off there."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    stream = io.StringIO()
    for _ in progress_bar(range(3), file=stream, mininterval=0):
        pass
    assert ("\r" in stream.getvalue()) is tty


def test_baselines_benchmark_on_another_folder_keeps_its_results(
    tmp_path: Path, offline_cache: Path
) -> None:
    """Not ML-100K: RecBole's reference is skipped with a note, the measured figures are
    printed and written, and no hard-coded reference figure is printed."""
    folder, out = write_csv_family(tmp_path / "ml-latest-small"), tmp_path / "out.json"
    args = ["--data", str(folder), "--models", "random,pop", "--out", str(out)]
    script = REPO / "benchmarks" / "ml100k_baselines.py"
    done = subprocess.run(
        [sys.executable, str(script), *args, "--device", "cpu", "--cache", str(offline_cache)],
        capture_output=True,
        text=True,
        env=cli_env(offline_cache),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RecBole's Pop not reproduced" in done.stdout and "u.data" in done.stdout
    assert "0.0721" not in done.stdout  # RecBole's published Pop HR@10
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"random", "pop"} and saved["pop_recbole_reproduced"] == {}
    assert f"| pop | {saved['results']['pop']['HR@10']:.4f} |" in done.stdout
