"""`marlrec compare` on fake run dirs: grouping by config minus seed, mean ± std, outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from marlrec.cli import main
from marlrec.compare import compare
from marlrec.registry import MarlrecError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(folder: Path, seed: int, agent: str, hr: float, ret: float) -> Path:
    folder.mkdir(parents=True)
    config = {
        "seed": seed,
        "cache_dir": f"/tmp/cache-{seed}",  # differs, but says nothing about the run
        "agent": {"name": agent, "lr": 0.001},
        "env": {"name": "slate", "roles": ["relevance", "diversity"]},
        "reward": {"click": {"weight": 1.0}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {
        "device": "cpu",
        "train": {"env_steps": 100},
        "eval": {
            "agent": {"test/HR@10": hr, "test/NDCG@10": hr / 2, "sim/mean_return": ret},
            "pop": {"test/HR@10": 0.1, "test/NDCG@10": 0.05, "sim/mean_return": 4.0},
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    multirun = tmp_path / "multirun"
    for seed, hr, ret in ((0, 0.2, 3.0), (1, 0.3, 5.0), (2, 0.4, 4.0)):
        fake_run(multirun / str(seed), seed, "idqn", hr, ret)
    single = fake_run(tmp_path / "runs" / "ppo", 0, "ippo", 0.5, 6.0)
    return [multirun, single]


def test_groups_by_config_minus_seed_and_reports_mean_and_std(
    runs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    table = compare(runs, out)
    lines = table.splitlines()
    assert lines[0] == "| group | policy | seeds | test/HR@10 | test/NDCG@10 | sim/mean_return |"
    # idqn over seeds 0, 1, 2: HR 0.2, 0.3, 0.4 -> mean 0.3, sample std 0.1; return 3, 5, 4.
    idqn = "agent=idqn env=slate reward=click"
    assert f"| {idqn} | agent | 3 | 0.3000 ± 0.1000 | 0.1500 ± 0.0500 | 4.0000 ± 1.0000 |" in lines
    assert f"| {idqn} | pop | 3 | 0.1000 ± 0.0000 | 0.0500 ± 0.0000 | 4.0000 ± 0.0000 |" in lines
    ippo = "agent=ippo env=slate reward=click"
    assert f"| {ippo} | agent | 1 | 0.5000 ± 0.0000 | 0.2500 ± 0.0000 | 6.0000 ± 0.0000 |" in lines
    assert len(lines) == 2 + 4


def test_writes_csv_json_and_plots(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    compare(runs, out, metrics=["test/HR@10"])
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    hr = [r for r in rows if r["metric"] == "test/HR@10" and r["policy"] == "agent"]
    assert [(r["group"].split()[0], float(r["mean"]), int(r["n"])) for r in hr] == [
        ("agent=idqn", pytest.approx(0.3), 3),
        ("agent=ippo", 0.5, 1),
    ]
    summary = json.loads((out / "compare.json").read_text())
    group = summary["groups"]["agent=idqn env=slate reward=click"]
    assert group["seeds"] == [0, 1, 2]
    returns = [
        r for r in summary["results"] if r["metric"] == "sim/mean_return" and r["policy"] == "agent"
    ]
    assert returns[0]["values"] == [3.0, 5.0, 4.0]
    assert math.isclose(returns[0]["std"], 1.0)
    plot = out / "test_HR_10.png"
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.json", plot.name]


def test_refuses_to_overwrite_without_force(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    compare(runs, out)
    before = (out / "compare.csv").read_text()
    with pytest.raises(MarlrecError, match="already exists; pass --force"):
        compare(runs[:1], out)
    assert (out / "compare.csv").read_text() == before
    compare(runs[:1], out, force=True)
    assert (out / "compare.csv").read_text() != before


def test_groups_differing_in_a_setting_are_labelled_by_it(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", 0, "idqn", 0.2, 1.0)
    other = fake_run(tmp_path / "b", 0, "idqn", 0.3, 1.0)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["agent"]["lr"] = 0.01
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    table = compare([tmp_path / "a", other], tmp_path / "out")
    assert "agent=idqn env=slate reward=click agent.lr=0.001 |" in table
    assert "agent=idqn env=slate reward=click agent.lr=0.01 |" in table


def test_cli_prints_the_table_and_reports_errors_in_one_line(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    code = main(["compare", *map(str, runs), "--out", str(out), "--metrics", "test/NDCG@10"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| group | policy | seeds | test/NDCG@10 |" in printed
    assert (out / "test_NDCG_10.png").is_file()
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a directory")
    assert main(["compare", str(runs[0]), "--out", str(out), "--metrics", "test/HR@5"]) == 2
    assert "no run reports metric 'test/HR@5'" in capsys.readouterr().err
    assert main(["compare"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_dir_without_runs_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MarlrecError, match="holds no run"):
        compare([tmp_path / "empty"], tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(MarlrecError, match="not a marlrec metrics file"):
        compare([broken], tmp_path / "out")


def test_labels_name_only_options_a_run_has(tmp_path: Path) -> None:
    """Another agent's options are not noise such as `agent.n_step=None` in a label."""
    for name, agent, extra in (("a", "idqn", {"n_step": 3}), ("b", "ippo", {"clip": 0.2})):
        run = fake_run(tmp_path / name, 0, agent, 0.2, 1.0)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["agent"].update(extra)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    table = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert "| agent=idqn env=slate reward=click agent.n_step=3 | agent |" in table
    assert "| agent=ippo env=slate reward=click agent.clip=0.2 | agent |" in table
    assert "None" not in table
