"""`marlrec export` and serving an export: int8 and ONNX scoring networks of a tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from marlrec.app import compose_config
from marlrec.cli import main
from marlrec.evaluation.rankers import AgentRanker, slate_core
from marlrec.export import (
    FORMATS,
    export_dir,
    export_run,
    load_networks,
    load_scorer,
    measure,
    write_networks,
)
from marlrec.pipeline import build
from marlrec.recommend import load_run
from marlrec.registry import MarlrecError
from marlrec.serve.app import create_app
from marlrec.serve.service import Service, model_version
from tests.conftest import SMALL

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiniest_run: Path) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(tiniest_run, run)  # exports are written into this copy
    for fmt in FORMATS:
        export_run(run, fmt, repeats=2)
    return run


@pytest.fixture(scope="module")
def observations(run_dir: Path) -> list[tuple[torch.Tensor, int]]:
    """The observations ranking a dozen users hands the scorer, with their roles."""
    p = load_run(run_dir)
    calls: list[tuple[torch.Tensor, int]] = []

    def record(obs: torch.Tensor, role: int) -> torch.Tensor:
        calls.append((obs, role))
        return p.agent.candidate_scores(obs, role)

    histories = [p.data.history_before(u, "valid") for u in range(12)]
    AgentRanker(slate_core(p.env), record).rank(histories)
    return calls


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_writes_its_networks_and_figures(run_dir: Path, fmt: str) -> None:
    report = json.loads((export_dir(run_dir, fmt) / "export.json").read_text())
    assert report["format"] == fmt and report["checkpoint"] == model_version(run_dir)
    assert report["speedup"] > 0 and report["fp32_seconds"] > 0 and report["threads"] >= 1
    assert 0.0 <= report["top10_overlap"] <= 1.0
    assert report["validation_users"] == 60 and report["scoring_calls"] > 0
    assert not [p for p in (run_dir / "export").iterdir() if p.name.startswith(".")]


def test_onnx_scores_are_fp32_scores(run_dir: Path, observations: list) -> None:
    p = load_run(run_dir)
    onnx = load_scorer(run_dir, "onnx", p)
    for obs, role in observations:  # batches of 12, not the traced batch of 2
        assert obs.shape[0] == 12
        expected = p.agent.candidate_scores(obs, role)
        assert torch.allclose(onnx(obs, role), expected, rtol=1e-4, atol=1e-4)
    report = json.loads((export_dir(run_dir, "onnx") / "export.json").read_text())
    assert report["top10_overlap"] == 1.0 and report["max_abs_difference"] < 1e-3


def test_a_trainable_state_model_exports_to_onnx(tmp_path: Path) -> None:
    """A GRU state recomputed inside the networks, traced on a batch of 2, scores batches of
    every validation chunk as fp32 does."""
    p = build(compose_config([*SMALL, "state=gru"]))
    assert p.agent.scoring_network(0).state_model is not None
    write_networks(tmp_path, "onnx", p)
    report = measure(p, load_networks(tmp_path, "onnx", p), repeats=1)
    assert report["max_abs_difference"] < 1e-3 and report["top10_overlap"] == 1.0


@pytest.mark.parametrize("fmt", ["int8", "onnx-int8"])
def test_int8_scores_keep_the_candidates_order(run_dir: Path, observations: list, fmt: str) -> None:
    p = load_run(run_dir)
    int8 = load_scorer(run_dir, fmt, p)
    for obs, role in observations:
        expected, got = p.agent.candidate_scores(obs, role), int8(obs, role)
        assert not torch.equal(got, expected)  # quantised for real
        open_ = torch.isfinite(expected) & (expected > -1e8)
        top_expected = expected.masked_fill(~open_, -torch.inf).topk(5).indices
        top_got = got.masked_fill(~open_, -torch.inf).topk(5).indices
        pairs = zip(top_expected.tolist(), top_got.tolist(), strict=True)
        shared = [len(set(a) & set(b)) for a, b in pairs]
        assert np.mean(shared) >= 4.0
    report = json.loads((export_dir(run_dir, fmt) / "export.json").read_text())
    assert report["top10_overlap"] >= 0.9 and report["max_abs_difference"] > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_serving_an_export_answers_recommend(run_dir: Path, fmt: str) -> None:
    service = Service.from_run(run_dir, model=fmt)
    client = TestClient(create_app(service))
    health = client.get("/health").json()
    assert health["model_version"] == f"{model_version(run_dir)}-{fmt}"
    response = client.get("/recommend", params={"user": 3, "k": 7})
    assert response.status_code == 200 and len(response.json()["items"]) == 7
    assert response.json()["model_version"] == health["model_version"]
    by_text = client.post("/recommend", json={"text": service.p.data.item_text[5], "k": 4})
    assert by_text.status_code == 200 and len(by_text.json()["items"]) == 4
    if fmt == "onnx":  # the same scores, so the same items as fp32
        fp32 = TestClient(create_app(Service.from_run(run_dir)))
        expected = fp32.get("/recommend", params={"user": 3, "k": 7}).json()["items"]
        assert [r["item"] for r in response.json()["items"]] == [r["item"] for r in expected]


def error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("marlrec: ")
    return err.strip()


def test_an_export_is_not_overwritten_without_force(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = export_dir(run_dir, "int8")
    before = (target / "export.json").read_text()
    line = error_line(capsys, "export", f"run_dir={run_dir}", "format=int8")
    assert line == f"marlrec: {target} exists; pass force=true to replace it"
    assert (target / "export.json").read_text() == before
    assert main(["export", f"run_dir={run_dir}", "format=int8", "force=true"]) == 0
    assert "top-10 overlap" in capsys.readouterr().out
    assert json.loads((target / "export.json").read_text())["format"] == "int8"
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == sorted(FORMATS)


def test_bad_exports_are_one_line_errors(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = error_line(capsys, "export", f"run_dir={run_dir}", "format=fp16")
    assert line == "marlrec: unknown format 'fp16'; formats: int8, onnx, onnx-int8"
    shutil.copy(run_dir / "config.yaml", tmp_path)  # a run that saved no checkpoint
    line = error_line(capsys, "export", f"run_dir={tmp_path}", "format=onnx")
    assert line == f"marlrec: {tmp_path} is not a finished marlrec run: last.pt is missing"
    line = error_line(capsys, "serve", f"run_dir={run_dir}", "model=fp16")
    assert line == "marlrec: unknown model 'fp16'; models: fp32, int8, onnx, onnx-int8"


def test_serving_a_missing_or_stale_export_is_refused(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    with pytest.raises(MarlrecError, match="has no int8 export: run marlrec export"):
        Service.from_run(copy, model="int8")
    shutil.copytree(run_dir / "export", copy / "export")
    checkpoint = copy / "checkpoints" / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")  # the run changed since
    (copy / "checkpoints" / "best.pt").unlink(missing_ok=True)
    with pytest.raises(MarlrecError, match="exported from another checkpoint"):
        Service.from_run(copy, model="onnx")
