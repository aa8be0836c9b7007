"""`marlrec plugins`: broken entry points are warned about, and `show` describes one plugin."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pytest

from marlrec import cli, config_source, registry
from marlrec.app import compose_config, preflight, register_plugin_configs

PLUGIN_SOURCE = '''
from dataclasses import dataclass, field

from marlrec.api import Reward, RewardConfig


class Documented(Reward):
    """Scores nothing; its options show how they are described."""

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        depth: int = 3
        """How deep to look,
        over two lines."""
        tags: list[str] = field(default_factory=lambda: ["a"])
        """Labels [in brackets]."""
        needed: str
        undocumented: float = 0.5

    def score(self, outcome):
        return 0.0
'''


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One package with a working reward and one whose module does not import."""
    (tmp_path / "documented_pkg.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "broken_pkg.py").write_text("import a_module_that_does_not_exist\n")
    info = tmp_path / "third-party-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[marlrec.rewards]\ndocumented = documented_pkg:Documented\nbroken = broken_pkg:Broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_options_are_described_with_type_default_and_docstring(third_party: None) -> None:
    options = {o.name: o for o in registry.describe("reward", "documented")}
    assert list(options) == ["weight", "depth", "tags", "needed", "undocumented"]
    assert options["weight"] == registry.OptionInfo(
        "weight", "float", "1.0", "Weight of this term in the global reward."
    )
    assert options["depth"] == registry.OptionInfo(
        "depth", "int", "3", "How deep to look,\nover two lines."
    )
    assert (options["tags"].type, options["tags"].default) == ("list[str]", "['a']")
    assert (options["needed"].default, options["needed"].doc) == ("required", "")
    assert options["undocumented"].doc == ""


def test_a_builtin_plugin_documents_every_option() -> None:
    options = registry.describe("env", "slate")
    assert options and all(o.doc for o in options)


def test_show_prints_package_class_and_options(
    third_party: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plugins", "show", "reward", "documented"]) == 0
    out = capsys.readouterr().out
    assert "reward 'documented' (reward=documented) from package third-party" in out
    assert "documented_pkg:Documented" in out
    assert "Scores nothing" in out
    assert "list[str]" in out and "Labels [in brackets]." in out
    assert "required" in out


def test_show_accepts_the_kind_noun(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins", "show", "dataset", "synthetic"]) == 0
    assert "n_items" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reward", "nope"], "unknown reward 'nope'"),
        (["rewardz", "click"], "unknown plugin kind 'rewardz'"),
        (["reward"], "usage: marlrec plugins show KIND NAME"),
        (["reward", "broken"], "ModuleNotFoundError"),
    ],
)
def test_show_reports_bad_arguments_in_one_line(
    args: list[str], message: str, third_party: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plugins", "show", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_listing_warns_about_a_broken_entry_point_instead_of_listing_it(
    third_party: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plugins"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1, captured.err
    assert "reward 'broken' (broken_pkg:Broken)" in warnings[0]
    assert "ModuleNotFoundError" in warnings[0]
    rows = captured.out.splitlines()
    assert any("documented" in row and "third-party" in row for row in rows)
    assert not any("broken" in row for row in rows)
    assert any("synthetic" in row for row in rows)  # the built-ins are still listed


def test_field_docs_read_only_string_literals_after_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = textwrap.dedent(
        '''
        from dataclasses import dataclass

        @dataclass
        class Config:
            """Class docstring, not a field's."""

            a: int = 1
            3
            b: int = 2
            """B."""
            c = 4
            """Not a field: no annotation."""
        '''
    )
    (tmp_path / "field_docs_example.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    config_cls = importlib.import_module("field_docs_example").Config
    assert registry.field_docs(config_cls) == {"b": "B."}


def test_composing_warns_once_about_a_broken_entry_point_and_names_it_when_chosen(
    third_party: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config_source._warned.discard("broken_pkg:Broken")
    register_plugin_configs()
    register_plugin_configs()  # composing again does not repeat the warning
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("marlrec: warning: reward 'broken'")
    assert "ModuleNotFoundError" in warnings[0]
    # The others are stored and compose, the third-party one included.
    reward = compose_config(["reward=[click,documented]", "reward.documented.needed=x"]).reward
    assert reward.documented.depth == 3 and reward.documented.needed == "x"
    with pytest.raises(registry.PluginError, match=r"^reward 'broken' \(broken_pkg:Broken\) fail"):
        preflight(["reward=[click,broken]"])
