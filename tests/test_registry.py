"""The plugin registry: listing from metadata, loading only what is chosen, validating configs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from marlrec import registry
from marlrec.registry import PluginError


def test_builtins_are_listed_by_kind_with_their_distribution() -> None:
    names = {group: [p.name for p in registry.available(group)] for group in registry.KINDS}
    assert "synthetic" in names["data"]
    assert "hf" in names["encoder"]
    assert "idqn" in names["agent"]
    assert {"random", "pop"} <= set(names["baseline"])
    assert all(p.distribution == "marlrec" for p in registry.available("agent"))


def test_listing_imports_no_plugin_code() -> None:
    code = textwrap.dedent(
        """
        import sys
        from marlrec import registry
        for group in registry.KINDS:
            registry.available(group)
        loaded = [m for m in sys.modules if m.startswith(("marlrec.agents.", "marlrec.envs.",
                  "marlrec.encoders.", "marlrec.datasets."))]
        print(loaded)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_names_the_kind_and_lists_installed() -> None:
    with pytest.raises(PluginError) as err:
        registry.load("agent", "nonexistent")
    message = str(err.value)
    assert "agent 'nonexistent'" in message
    assert "idqn" in message and "\n" not in message


@dataclass(kw_only=True)
class ExampleConfig:
    lr: float = 0.1
    layers: list[int] = field(default_factory=lambda: [8])
    mode: str = "fast"


def test_config_is_built_and_ints_widen_to_float() -> None:
    config = registry.build_config("agent", "x", ExampleConfig, {"lr": 1, "layers": [4, 4]})
    assert config == ExampleConfig(lr=1.0, layers=[4, 4])
    assert isinstance(config.lr, float)


def test_misspelled_key_is_named_with_a_suggestion() -> None:
    with pytest.raises(
        PluginError, match=r"unknown config key 'agent\.lrr'.*did you mean 'agent\.lr'"
    ):
        registry.build_config("agent", "x", ExampleConfig, {"lrr": 0.1})


def test_wrong_type_is_named() -> None:
    with pytest.raises(PluginError, match=r"'agent\.layers'.*must be list\[int\]"):
        registry.build_config("agent", "x", ExampleConfig, {"layers": "wide"})


def test_list_groups_name_the_plugin_in_the_key_and_the_yaml_file() -> None:
    with pytest.raises(PluginError, match=r"'reward\.x\.lr' for reward 'x' \(set in x\.yaml"):
        registry.build_config("reward", "x", ExampleConfig, {"lr": "fast"}, source="x.yaml")


def test_create_requires_a_name() -> None:
    with pytest.raises(PluginError, match="names no plugin"):
        registry.create("agent", {"lr": 0.1})


def _fake_distribution(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_a_plugin_that_fails_to_load_gives_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_reward_pkg.py").write_text("import a_module_that_does_not_exist\n")
    _fake_distribution(
        tmp_path, "broken-reward", "[marlrec.rewards]\nbroken = broken_reward_pkg:Broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    listed = {p.name: p.distribution for p in registry.available("reward")}
    assert listed["broken"] == "broken-reward"  # listed from metadata without importing it
    with pytest.raises(PluginError) as err:
        registry.load("reward", "broken")
    message = str(err.value)
    assert "reward 'broken'" in message and "failed to load" in message
    assert "ModuleNotFoundError" in message and "\n" not in message


def test_a_plugin_without_config_dataclass_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plain_reward_pkg.py").write_text("class Plain:\n    Config = dict\n")
    entry = "[marlrec.rewards]\nplain = plain_reward_pkg:Plain\n"
    _fake_distribution(tmp_path, "plain-reward", entry)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="no dataclass `Config`"):
        registry.load("reward", "plain")


def test_a_class_installed_under_two_names_speaks_as_the_one_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "twice_pkg.py").write_text(
        textwrap.dedent(
            """
            from marlrec.api import Reward

            class Twice(Reward):
                def score(self, outcome):
                    return 0.0
            """
        )
    )
    info = tmp_path / "twice-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: twice\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[marlrec.rewards]\nfirst = twice_pkg:Twice\nsecond = twice_pkg:Twice\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    built = {
        name: registry.create("reward", {"name": name}, data=None, item_emb=None)
        for name in ("first", "second")
    }
    assert {n: (r.name, r.where) for n, r in built.items()} == {
        "first": ("first", "reward 'first'"),
        "second": ("second", "reward 'second'"),
    }
    # Built directly, not by the registry, it reads the first of its entry points.
    direct = type(built["second"])(built["second"].config, data=None, item_emb=None)
    assert direct.name == "first"
