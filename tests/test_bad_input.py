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
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from marlrec import cli
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


# --- the battery: each bad input exits non-zero with one line and no traceback --------------


def one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `marlrec ARGV` in this process; return its single stderr line."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marlrec: "), err
    return lines[0]


SEED = "seed must be a whole number from 0 to 4294967295"
TRAIN_CASES = {
    "seed=abc": (["seed=abc"], f"{SEED}, got 'abc'"),
    "seed=-1": (["seed=-1"], f"{SEED}, got -1"),
    "seed=1.5": (["seed=1.5"], f"{SEED}, got 1.5"),
    "seed=true": (["seed=true"], f"{SEED}, got True"),
    "seed too big": (["seed=99999999999"], f"{SEED}, got 99999999999"),
    "empty seed": (["seed="], f"{SEED}, got ''"),
    "unknown device": (["device=tpu"], "device must be auto, cpu, cuda or cuda:<n>, got 'tpu'"),
    "cache_dir a list": (["cache_dir=[1]"], "cache_dir must be a folder's path, got [1]"),
    "wrong type": (
        ["trainer.max_epochs=abc"],
        "config key 'trainer.max_epochs' for the 'trainer' settings must be int, got 'abc'",
    ),
    "float for an int": (["trainer.max_epochs=1e9"], "must be int, got 1000000000.0"),
    "negative count": (["trainer.max_epochs=-1"], "trainer.max_epochs must be 0 or more, got -1"),
    "negative k": (["eval.ks=[-5]"], "eval.ks must be a non-empty list of positive cut-offs"),
    "zero k": (["eval.ks=[0]"], "eval.ks must be a non-empty list of positive cut-offs"),
    "NaN weight": (
        ["reward.click.weight=nan"],
        "config key 'reward.click.weight' for reward 'click' must be a number, got nan",
    ),
    "no reward": (["reward=[]"], "no reward selected: set reward=[click,...]"),
    "unknown reward": (["reward=[click,clik]"], "unknown reward 'clik'"),
    "unknown preset": (["experiment=quik"], "unknown experiment preset 'quik'"),
    "unknown search": (["hparams_search=quik"], "unknown hparams_search preset 'quik'"),
    "option of another dataset": (["data.path=x"], "unknown config key 'data.path'"),
    "unresolved interpolation": (["seed=${oops}"], "Interpolation key 'oops' not found (at seed)"),
    "nameless override": (["=1"], "override '=1' names no key"),
    "no equals sign": (["seed"], "cannot parse the overrides"),
}


@pytest.mark.parametrize(("args", "expected"), TRAIN_CASES.values(), ids=TRAIN_CASES)
def test_bad_train_arguments(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = one_line(["train", *args, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert expected in line
    assert not (tmp_path / "run").exists()  # refused before anything is written


NOT_A_RUN = "is not a finished marlrec run: config.yaml is missing"
COMMAND_CASES = {
    "user=NaN": (["recommend", "run_dir=r", "user=NaN"], "user must be a whole number"),
    "user=.nan": (["recommend", "run_dir=r", "user=.nan"], "got nan"),
    "user=abc": (["recommend", "run_dir=r", "user=abc"], "user must be a whole number"),
    "user=1.5": (["recommend", "run_dir=r", "user=1.5"], "got 1.5"),
    "user=-1": (["recommend", "run_dir=r", "user=-1"], "user must be a whole number from 0"),
    "k=0": (["recommend", "run_dir=r", "user=1", "k=0"], "k must be a whole number from 1 to 1000"),
    "k=-3": (["recommend", "run_dir=r", "user=1", "k=-3"], "got -3"),
    "huge k": (["recommend", "run_dir=r", "user=1", "k=10000000"], "got 10000000"),
    "no user": (["recommend", "run_dir=r"], "missing user=..."),
    "unknown option": (["evaluate", "run_dir=r", "rundir=s"], "unknown option 'rundir'"),
    "not a run": (["recommend", "run_dir=.", "user=1"], NOT_A_RUN),
    "evaluate not a run": (["evaluate", "run_dir=."], NOT_A_RUN),
    "port=abc": (["serve", "run_dir=r", "port=abc"], "port must be a whole number from 0 to 65535"),
    "plugins show unknown": (["plugins", "show", "reward", "nope"], "unknown reward 'nope'"),
}


@pytest.mark.parametrize(("argv", "expected"), COMMAND_CASES.values(), ids=COMMAND_CASES)
def test_bad_command_arguments(
    argv: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert expected in one_line(argv, capsys)


# A third-party plugin package, installed by metadata in a folder on sys.path: a reward with
# a YAML file of its own, and a preset.
PLUGIN_CODE = """
from dataclasses import dataclass
from marlrec.api import Reward, RewardConfig


class Fussy(Reward):
    @dataclass(kw_only=True)
    class Config(RewardConfig):
        boost: float = 1.0

    def score(self, outcome):
        return 0.0
"""


@pytest.fixture
def plugin_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "fussy_pkg"
    (package / "conf" / "reward").mkdir(parents=True)
    (package / "conf" / "experiment").mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN_CODE))
    (package / "conf" / "__init__.py").write_text("")
    info = tmp_path / "fussy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fussy\nVersion: 0.1\n")
    entry_points = (
        "[marlrec.rewards]\nfussy = fussy_pkg:Fussy\n[marlrec.conf]\nfussy = fussy_pkg.conf\n"
    )
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("fussy_pkg", "fussy_pkg.conf"):  # this test's copy, not an earlier one
        monkeypatch.delitem(sys.modules, module, raising=False)
    return package / "conf"


# A plugin's YAML extends its stored defaults, named `<plugin>_config`.
EXTENDS = "defaults: [fussy_config, _self_]\n"
YAML_CASES = {
    "plugin YAML syntax": (
        "reward/fussy.yaml",
        EXTENDS + "fussy:\n  boost: [1\n",
        ["reward=[click,fussy]"],
        "reward/fussy.yaml, line 4, column 1: expected ',' or ']'",
    ),
    "plugin YAML type": (
        "reward/fussy.yaml",
        EXTENDS + "fussy:\n  boost: fast\n",
        ["reward=[click,fussy]"],
        "config key 'reward.fussy.boost' for reward 'fussy' (set in {conf}/reward/fussy.yaml",
    ),
    "plugin YAML unknown key": (
        "reward/fussy.yaml",
        EXTENDS + "fussy:\n  bost: 2\n",
        ["reward=[click,fussy]"],
        "unknown config key 'reward.fussy.bost'",
    ),
    "plugin YAML without its name level": (
        "reward/fussy.yaml",
        EXTENDS + "boost: 2\n",
        ["reward=[click,fussy]"],
        "{conf}/reward/fussy.yaml: top-level key 'boost' is not 'fussy'",
    ),
    "plugin YAML not extending the defaults": (
        "reward/fussy.yaml",
        "fussy:\n  boost: 2\n",
        ["reward=[click,fussy]"],
        "{conf}/reward/fussy.yaml must extend the plugin's defaults: start it with "
        "`defaults: [fussy_config, _self_]`",
    ),
    "plugin YAML interpolation": (
        "reward/fussy.yaml",
        EXTENDS + "fussy:\n  boost: ${nope}\n",
        ["reward=[click,fussy]"],
        "Interpolation key 'nope' not found (at reward.fussy.boost)",
    ),
    "preset YAML syntax": (
        "experiment/broken.yaml",
        "# @package _global_\ntrainer:\n  max_epochs: [1\n",
        ["experiment=broken"],
        "{conf}/experiment/broken.yaml, line 4, column 1: expected ',' or ']'",
    ),
    "preset YAML type": (
        "experiment/broken.yaml",
        "# @package _global_\ntrainer:\n  max_epochs: many\n",
        ["experiment=broken"],
        "config key 'trainer.max_epochs' for the 'trainer' settings must be int, got 'many'",
    ),
}


@pytest.mark.parametrize(("file", "text", "args", "expected"), YAML_CASES.values(), ids=YAML_CASES)
def test_bad_yaml(
    file: str,
    text: str,
    args: list[str],
    expected: str,
    plugin_package: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (plugin_package / file).write_text(text)
    assert expected.format(conf=plugin_package) in one_line(["train", *args], capsys)


def test_bad_yaml_while_printing_the_config(
    plugin_package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugin_package / "reward" / "fussy.yaml").write_text("fussy:\n  boost: [1\n")
    line = one_line(["train", "reward=[click,fussy]", "--cfg", "job"], capsys)
    assert f"{plugin_package}/reward/fussy.yaml, line 3, column 1" in line


# --- at run time: data files, and a plugin that raises (a subprocess each) ----------------------

RAISING_DATASET = """
from dataclasses import dataclass
from marlrec.datasets import Dataset


class Broken(Dataset):
    @dataclass(kw_only=True)
    class Config:
        pass

    def load(self, *, seed, cache_dir):
        raise RuntimeError("the disk is on fire\\nand a second line")
"""


def train_fails(args: list[str], tmp_path: Path, cache: Path, path: str = "") -> str:
    """`marlrec train ARGS` in a fresh process: its one stderr line; it wrote no metrics."""
    env = cli_env(cache)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH", "")]))
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "marlrec.cli", "train", *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert not (run_dir / "metrics.json").exists()
    assert not list(run_dir.rglob("*.tmp"))  # nothing half-written
    return lines[0]


DATA_CASES = {
    "empty file": ("", "ratings.csv: the file is empty"),
    "truncated file": ("user_id,item_id\nu1,i1\nu1,i2\nu2", "ratings.csv, line 4:"),
    "NaN user id": ("user_id,item_id\nu1,i1\nNaN,i2\n", "ratings.csv, line 3: user_id 'NaN' is a"),
    "mixed encodings": (b"user_id,item_id\nu1,caf\xc3\xa9\nu2,caf\xe9\n", "ratings.csv, line 3:"),
}


@pytest.mark.parametrize(("text", "expected"), DATA_CASES.values(), ids=DATA_CASES)
def test_bad_data_file(
    text: str | bytes, expected: str, tmp_path: Path, offline_cache: Path
) -> None:
    ratings = tmp_path / "ratings.csv"
    ratings.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = train_fails(["data=csv", f"data.path={ratings}"], tmp_path, offline_cache)
    assert line.startswith("marlrec: dataset 'csv': ") and expected in line


def test_a_plugin_that_raises_is_named_and_logged(tmp_path: Path, offline_cache: Path) -> None:
    (tmp_path / "broken_data.py").write_text(textwrap.dedent(RAISING_DATASET))
    info = tmp_path / "broken_data-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-data\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[marlrec.datasets]\nbroken = broken_data:Broken\n")
    line = train_fails(["data=broken"], tmp_path, offline_cache, path=str(tmp_path))
    assert line == "marlrec: dataset 'broken' failed: RuntimeError: the disk is on fire"
    log = (tmp_path / "run" / "train.log").read_text()
    assert "dataset 'broken' failed: RuntimeError: the disk is on fire" in log
    assert 'raise RuntimeError("the disk is on fire' in log  # the trace, for whoever debugs it
