"""A run: train the agent, evaluate it beside the baselines, write everything into the run dir.

A run dir holds `config.yaml`, `metrics.json`, `learning_curve.png`, `tensorboard/` and
`checkpoints/`: `last.pt` (the agent after the latest epoch), `best.pt` (the agent at the best
validation NDCG@10, which evaluation and serving use) and `train_state.pt` (everything needed to
continue training exactly, rewritten atomically after every epoch). `marlrec train
trainer.resume=true hydra.run.dir=<run dir>` continues a killed run there, with its saved config.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

from marlrec.agents import checkpoint_path
from marlrec.evaluation.harness import (
    agent_actor,
    agent_ranker,
    baseline_actor,
    baseline_ranker,
    evaluate_policies,
    ranking_eval,
)
from marlrec.io import atomic_path, atomic_write, write_json
from marlrec.pipeline import Pipeline, build
from marlrec.registry import MarlrecError
from marlrec.settings import TrainRun
from marlrec.training.imitation import imitate
from marlrec.training.loop import VALID_METRIC, fit

AGENT_ROW = "agent"
TRAIN_STATE = "train_state.pt"
# Keys a resumed run may set differently from the run it continues.
RESUME_FREE_KEYS = ("trainer.resume", "trainer.show_progress", "device", "cache_dir")


def save_checkpoint(pipeline: Pipeline, path: Path, epoch: int | None) -> None:
    with atomic_path(path) as tmp:
        torch.save({"epoch": epoch, "agent": pipeline.agent.state_dict()}, tmp)


def restore_best(pipeline: Pipeline, run_dir: Path) -> None:
    """Load the policy with the best validation NDCG@10, or the last one if none was kept."""
    path = checkpoint_path(run_dir, "best")
    if not path.is_file():
        path = checkpoint_path(run_dir)
    state = torch.load(path, map_location=pipeline.device, weights_only=False)
    pipeline.agent.load_state_dict(state["agent"])


def evaluate(pipeline: Pipeline, show_progress: bool = True) -> dict[str, dict[str, float]]:
    """The trained agent and every baseline through the same harness."""
    p = pipeline
    rankers = {AGENT_ROW: agent_ranker(p.env, p.agent)}
    actors = {AGENT_ROW: agent_actor(p.env, p.agent)}
    for name, baseline in p.baselines.items():
        rankers[name] = baseline_ranker(baseline)
        actors[name] = baseline_actor(p.env, baseline)
    seed = int(p.cfg.seed) + 20_000  # sessions unseen in training and in its test steps
    return evaluate_policies(
        p.data, p.env, rankers, actors, p.eval, seed, show_progress=show_progress
    )


def validation(pipeline: Pipeline) -> Callable[[], float]:
    """The current policy's NDCG@10 on the validation split, under the full-ranking protocol
    whatever `eval` reports, so that model selection never depends on sampled negatives."""
    p = pipeline
    cfg = dataclasses.replace(p.eval, metrics=["ndcg"], ks=[10], protocol="full")
    ranker = agent_ranker(p.env, p.agent)

    def validate() -> float:
        figures = ranking_eval(p.data, ranker, "valid", cfg, item_emb=p.item_emb, seed=0)
        (ndcg,) = figures.values()
        return float(ndcg)

    return validate


def resumable_config(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> DictConfig:
    """The config a run continues with: with `trainer.resume`, the one saved in its run dir.

    Overrides beyond RESUME_FREE_KEYS must then agree with the saved config; a resumed run
    needs none of the original command line's.
    """
    saved_file = run_dir / "config.yaml"
    if not cfg.trainer.resume or not saved_file.is_file():
        return cfg
    saved = OmegaConf.load(saved_file)
    assert isinstance(saved, DictConfig)
    free = {f"{prefix}{key}" for key in RESUME_FREE_KEYS for prefix in ("", "+", "++")}
    if any(o.split("=", 1)[0] not in free for o in overrides):
        difference = first_difference(_flat(saved), _flat(cfg))
        if difference is not None:
            key, before, now = difference
            raise MarlrecError(
                f"cannot resume {run_dir}: its config has {key}={before!r}, this command "
                f"{key}={now!r}; resume with the same settings or with trainer.resume=true alone"
            )
    for key in RESUME_FREE_KEYS:
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    return saved


def _flat(cfg: DictConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return {k: v for k, v in flat.items() if k not in RESUME_FREE_KEYS}


def first_difference(before: dict[str, Any], now: dict[str, Any]) -> tuple[str, Any, Any] | None:
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            return key, before.get(key), now.get(key)
    return None


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate one configuration; write config, checkpoints, logs, plot and metrics.

    With `trainer.resume=true`, training continues from `checkpoints/train_state.pt` in
    `run_dir` when there is one, to the same results as an uninterrupted run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True).encode())
    )
    state_path = checkpoint_path(run_dir).with_name(TRAIN_STATE)
    resuming = bool(cfg.trainer.resume) and state_path.is_file()
    if not resuming:
        # A fresh run must never fall back on a best checkpoint some earlier run left here.
        checkpoint_path(run_dir, "best").unlink(missing_ok=True)
    start = time.perf_counter()
    pipeline = build(cfg)
    setup_seconds = time.perf_counter() - start
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    try:
        run = TrainRun(
            trainer=pipeline.trainer,
            logger=pipeline.logger,
            seed=int(cfg.seed),
            writer=writer,
            save_checkpoint=lambda epoch: save_checkpoint(
                pipeline, checkpoint_path(run_dir), epoch
            ),
            save_best=lambda: save_checkpoint(pipeline, checkpoint_path(run_dir, "best"), None),
            validate=validation(pipeline),
            state_path=state_path,
        )
        imitation = imitation_summary(pipeline, run, run_dir, resuming)
        summary = {**imitation, **fit(pipeline.agent, pipeline.env, run)}
        restore_best(pipeline, run_dir)
        results = evaluate(pipeline, show_progress=pipeline.trainer.show_progress)
        for policy, row in results.items():
            for key, value in row.items():
                writer.add_scalar(f"eval/{policy}/{key}", value)
    finally:
        writer.close()
    metrics = {
        "device": str(pipeline.device),
        "setup_seconds": setup_seconds,
        "train": summary,
        "history": run.history,
        "eval": results,
    }
    write_json(run_dir / "metrics.json", metrics)
    if run.history:
        write_learning_curve(run.history, run_dir / "learning_curve.png")
        print_history(run.history)
    print_table(results, title=f"{cfg.agent.name} on {cfg.data.name} ({run_dir})")
    return metrics


def imitation_summary(
    pipeline: Pipeline, run: TrainRun, run_dir: Path, resuming: bool
) -> dict[str, float]:
    """Imitation's figures: a fresh run imitates and saves them; a resumed run, whose restored
    networks imitation already shaped, reads them back."""
    saved = run_dir / "checkpoints" / "imitation.json"
    if resuming:
        return json.loads(saved.read_text()) if saved.is_file() else {}
    summary = imitate(pipeline.agent, pipeline.env, run)
    write_json(saved, summary)
    return summary


def write_learning_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Test return and validation NDCG@10 against env steps, as a PNG (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    ret_axis = figure.add_subplot()
    tested = [r for r in history if "test_return" in r]
    ret_axis.plot([r["env_step"] for r in tested], [r["test_return"] for r in tested], "C0-o")
    ret_axis.set_xlabel("env steps")
    ret_axis.set_ylabel("test return", color="C0")
    validated = [r for r in history if VALID_METRIC in r]
    ndcg_axis = ret_axis.twinx()
    ndcg_axis.plot([r["env_step"] for r in validated], [r[VALID_METRIC] for r in validated], "C1-s")
    ndcg_axis.set_ylabel(VALID_METRIC, color="C1")
    figure.suptitle("learning curve")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def print_history(history: list[dict[str, Any]]) -> None:
    """One row per epoch; the best validation is starred."""
    scores = [r[VALID_METRIC] for r in history if VALID_METRIC in r]
    best = max(scores) if scores else None
    table = Table(title="training")
    for column in ("epoch", "env steps", "test return", VALID_METRIC):
        table.add_column(column, justify="right")
    for r in history:
        ndcg = r.get(VALID_METRIC)
        mark = " *" if ndcg is not None and ndcg == best else ""
        table.add_row(
            str(r["epoch"]),
            str(r["env_step"]),
            f"{r['test_return']:.4f}" if "test_return" in r else "",
            f"{ndcg:.4f}{mark}" if ndcg is not None else "",
        )
    Console(width=160).print(table)


def load_run(run_dir: Path) -> Pipeline:
    """Rebuild a saved run's pipeline and restore its trained agent."""
    config_file = run_dir / "config.yaml"
    for needed in (config_file, checkpoint_path(run_dir)):
        if not needed.is_file():
            raise MarlrecError(f"{run_dir} is not a finished marlrec run: {needed.name} is missing")
    cfg = OmegaConf.load(config_file)
    assert isinstance(cfg, DictConfig)
    pipeline = build(cfg)
    restore_best(pipeline, run_dir)
    return pipeline


def evaluate_run(run_dir: Path) -> dict[str, dict[str, float]]:
    """Re-evaluate a saved run; the figures go to a new file, never over earlier ones."""
    pipeline = load_run(run_dir)
    results = evaluate(pipeline)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    write_json(run_dir / "evaluations" / f"{stamp}.json", results)
    print_table(results, title=f"re-evaluation of {run_dir}")
    return results


def recommend_for(p: Pipeline, user: int, k: int) -> list[dict[str, Any]]:
    """Top-k items for a known user from everything they consumed, each with why it is there."""
    if not 0 <= user < p.data.n_users:
        raise MarlrecError(f"unknown user {user}: ids run from 0 to {p.data.n_users - 1}")
    history = p.data.interactions.histories(p.data.n_users)[user]  # everything, held-out too
    top = p.env.rank(p.agent.candidate_scores, np.array([user]), [history], k)[0].cpu()
    return explain(p, history, top.numpy())


def explain(p: Pipeline, history: np.ndarray, items: np.ndarray) -> list[dict[str, Any]]:
    """Who placed each item, and which item of the history it is most like."""
    roles, slate = p.env.spec.roles, getattr(p.env, "core", None)
    unit = torch.nn.functional.normalize(p.item_emb, dim=-1)
    similarity = unit[torch.as_tensor(items)] @ unit[torch.as_tensor(history)].T
    rows = []
    for position, item in enumerate(items.tolist()):
        if slate is not None and position < slate.slate_size:
            source = f"chosen by the '{roles[slate.turn_order[position]]}' agent"
        else:
            source = "ranked by the agents' scores after the slate"
        nearest = int(similarity[position].argmax()) if len(history) else -1
        because = (
            f"like '{p.data.item_text[int(history[nearest])][:70]}' "
            f"(cosine {float(similarity[position, nearest]):.2f})"
            if nearest >= 0
            else "no history yet"
        )
        rows.append({"item": item, "text": p.data.item_text[item], "why": f"{source}; {because}"})
    return rows


SHORT_NAMES = {
    "sim/mean_return": "return",
    "sim/clicks_per_session": "clicks/session",
    "sim/session_depth": "slates/session",
}


TABLE_METRICS = ("HR", "NDCG", "MRR", "Coverage", "ILD")


def print_table(results: dict[str, dict[str, float]], title: str) -> None:
    """Test-split ranking metrics and simulated-session figures, one row per policy."""
    first = next(iter(results.values()))
    # Headline ranking metrics at the first cut-off; metrics.json keeps every metric and K.
    test = [c for c in first if c.startswith("test/")]
    k = test[0].rsplit("@", 1)[-1] if test else ""
    columns = [c for c in test if c.rsplit("/", 1)[-1] in {f"{m}@{k}" for m in TABLE_METRICS}]
    columns += [c for c in first if c in SHORT_NAMES]
    terms = [c for c in first if c.startswith("sim/reward/")]
    columns += terms if len(terms) > 1 else []
    table = Table(title=title)
    table.add_column("policy")
    for column in columns:
        table.add_column(SHORT_NAMES.get(column, column.split("/", 1)[1]), justify="right")
    for policy, row in results.items():
        table.add_row(policy, *(f"{row[c]:.4f}" for c in columns))
    Console(width=160).print(table)
