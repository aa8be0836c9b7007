"""`marlrec.api`, the public plugin API: complete, importable for free, and what plugins use."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import marlrec.api as api
from marlrec.data import Interactions, RecData, Split

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_resolves_to_its_definition() -> None:
    assert api.__all__ == sorted(api._HOMES)
    for name in api.__all__:
        assert getattr(api, name) is getattr(importlib.import_module(api._HOMES[name]), name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Rewards'"):
        api.Rewards  # noqa: B018


def test_importing_it_loads_nothing_heavy() -> None:
    code = "import sys, marlrec.api; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    assert not loaded & {"torch", "tianshou", "numpy", "transformers"}


def test_example_plugin_imports_only_the_public_api() -> None:
    source = ROOT / "plugins" / "marlrec-long-tail" / "marlrec_long_tail" / "__init__.py"
    modules = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    assert {m for m in modules if m.split(".")[0] == "marlrec"} == {"marlrec.api"}


def one_user_data(train_items: list[int], n_items: int = 6) -> RecData:
    n = len(train_items)
    train = Interactions(
        user=np.zeros(n, dtype=np.int64),
        item=np.array(train_items, dtype=np.int64),
        time=np.arange(n, dtype=np.float64),
        value=np.ones(n, dtype=np.float32),
    )
    split = Split(train=train, valid_item=np.array([-1]), test_item=np.array([-1]))
    text = [f"item {i}" for i in range(n_items)]
    return RecData(
        name="one", n_users=1, n_items=n_items, interactions=train, item_text=text, split=split
    )


def test_a_reward_reads_the_users_training_history() -> None:
    from marlrec.rewards.click import ClickReward

    reward = ClickReward(api.RewardConfig(), data=one_user_data([4, 2, 5]), item_emb=torch.eye(6))
    np.testing.assert_array_equal(reward.train_history(0), [4, 2, 5])
