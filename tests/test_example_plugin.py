"""The example plugin package `plugins/marlrec-long-tail`, installed as a third party would.

It is installed into a private `--target` folder, never into the shared environment, and the
checks that need it see it through PYTHONPATH in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from marlrec import registry
from marlrec.data import Interactions, RecData, Split
from marlrec.registry import PluginError
from marlrec.rewards import SlateOutcome

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "marlrec-long-tail"

# Composes marlrec's config the way `marlrec train` does, with plugin YAML on the search path.
COMPOSE = """
import json, sys
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from marlrec.app import preflight, register_plugin_configs
overrides = sys.argv[1:]
register_plugin_configs()
preflight(overrides)
with initialize_config_module("marlrec.conf", version_base="1.3"):
    cfg = compose("config", overrides=overrides)
print(json.dumps(OmegaConf.to_container(cfg.reward, resolve=True)))
"""


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin, built offline from a copy (setuptools writes build/ beside its source)."""
    tmp = tmp_path_factory.mktemp("long-tail")
    source = tmp / "src"
    shutil.copytree(
        PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    installed = tmp / "site"
    # Offline: no dependencies fetched, the build uses the setuptools already installed.
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", *offline, f"--target={installed}", source],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return installed


def run(args: list[str], tmp: Path, target: Path | None) -> subprocess.CompletedProcess[str]:
    """Run Python in a fresh process that sees the plugin only when `target` is given."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "MARLREC_CACHE": str(tmp / "cache")}
    # This checkout's marlrec, whichever copy is installed.
    env["PYTHONPATH"] = os.pathsep.join([*([str(target)] if target else []), str(ROOT)])
    return subprocess.run(
        [sys.executable, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
    )


def test_plugins_command_lists_it_only_when_installed(target: Path, tmp_path: Path) -> None:
    with_it = run(["-m", "marlrec.cli", "plugins"], tmp_path, target)
    assert with_it.returncode == 0, with_it.stderr
    rows = [line for line in with_it.stdout.splitlines() if "long_tail" in line]
    assert len(rows) == 1 and "marlrec-long-tail" in rows[0], with_it.stdout
    without = run(["-m", "marlrec.cli", "plugins"], tmp_path, None)
    assert without.returncode == 0, without.stderr
    assert "long_tail" not in without.stdout


def tiny_data() -> RecData:
    """Ten items; training counts put item 3 first, then items 1 and 7 tied at four."""
    counts = [0, 4, 1, 5, 0, 2, 0, 4, 1, 0]
    items = np.repeat(np.arange(10), counts)
    n = len(items)
    train = Interactions(
        user=np.zeros(n, dtype=np.int64),
        item=items.astype(np.int64),
        time=np.arange(n, dtype=np.float64),
        value=np.ones(n, dtype=np.float32),
    )
    split = Split(train=train, valid_item=np.array([-1]), test_item=np.array([-1]))
    return RecData(
        name="tiny",
        n_users=1,
        n_items=10,
        interactions=train,
        item_text=[f"item {i}" for i in range(10)],
        split=split,
    )


def outcome(items: list[int], clicks: list[bool]) -> SlateOutcome:
    return SlateOutcome(
        user=0,
        items=np.array(items),
        roles=np.zeros(len(items), dtype=np.int64),
        clicks=np.array(clicks),
        step=0,
    )


def make(head_share: float) -> Any:
    """Load the reward through its entry point, as the pipeline does."""
    section = {"name": "long_tail", "head_share": head_share}
    return registry.create("reward", section, data=tiny_data(), item_emb=torch.zeros(10, 4))


def test_long_tail_reward_counts_clicked_tail_items(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(target))
    # ceil(0.2 * 10) = 2 head items: 3, then 1 (ties with 7, lower id wins).
    reward = make(0.2)
    np.testing.assert_array_equal(np.flatnonzero(~reward.is_tail), [1, 3])
    # Clicks on 3 (head), 7 and 9 (tail); 1 is not clicked.
    slate = outcome([3, 7, 9, 1], [True, True, True, False])
    assert reward.score(slate) == 2.0
    assert reward.weight == 1.0  # the dataclass default; the YAML's 0.5 comes from Hydra
    # ceil(0.25 * 10) = 3 head items: 7 joins the head.
    assert make(0.25).score(slate) == 1.0
    assert reward.score(outcome([3, 1], [True, True])) == 0.0


@pytest.mark.parametrize("head_share", [0.0, 1.0, -0.1, 1.5])
def test_head_share_outside_zero_one_is_a_plugin_error(
    head_share: float, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(target))
    with pytest.raises(PluginError, match="head_share") as info:
        make(head_share)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "weight"), [([], 0.5), (["reward.long_tail.weight=2.0"], 2.0)]
)
def test_plugin_yaml_overrides_the_dataclass_and_the_command_line_overrides_both(
    override: list[str], weight: float, target: Path, tmp_path: Path
) -> None:
    """The package's YAML sets only `weight` (0.5); `head_share` comes from the dataclass."""
    done = run(["-c", COMPOSE, "reward=[click,long_tail]", *override], tmp_path, target)
    assert done.returncode == 0, done.stderr
    reward = json.loads(done.stdout.splitlines()[-1])
    assert reward == {"click": {"weight": 1.0}, "long_tail": {"weight": weight, "head_share": 0.2}}


def test_selecting_it_uninstalled_is_a_one_line_error(tmp_path: Path) -> None:
    done = run(["-m", "marlrec.cli", "train", "reward=[click,long_tail]"], tmp_path, None)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "long_tail" in lines[0] and "installed:" in lines[0]
    assert "Traceback" not in done.stderr


def test_training_with_it_reports_its_term(target: Path, tmp_path: Path) -> None:
    """One tiny run (about a minute on two cores, most of it encoding and compiling)."""
    run_dir = tmp_path / "run"
    args = ["experiment=quick", "reward=[click,long_tail]", "trainer.max_epochs=1"]
    args += ["trainer.epoch_num_env_steps=200", "trainer.test_episodes=2", "eval.sessions=5"]
    args += ["trainer.show_progress=false", f"hydra.run.dir={run_dir}"]
    done = run(["-m", "marlrec.cli", "train", *args], tmp_path, target)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for row in metrics["eval"].values():
        click, tail = row["sim/reward/click"], row["sim/reward/long_tail"]
        assert 0 <= tail <= click
        # The global reward weighs long_tail by its YAML default, 0.5.
        assert row["sim/mean_return"] == pytest.approx(click + 0.5 * tail)
    assert "sim/reward/long_tail" in metrics["eval"]["agent"]
