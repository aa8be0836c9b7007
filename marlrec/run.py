"""A run: train the agent, evaluate it beside the baselines, write everything into the run dir."""

from __future__ import annotations

import time
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
)
from marlrec.io import atomic_path, atomic_write, write_json
from marlrec.pipeline import Pipeline, build
from marlrec.registry import MarlrecError
from marlrec.settings import TrainRun

AGENT_ROW = "agent"


def save_checkpoint(pipeline: Pipeline, path: Path, epoch: int | None) -> None:
    with atomic_path(path) as tmp:
        torch.save({"epoch": epoch, "agent": pipeline.agent.state_dict()}, tmp)


def restore_best(pipeline: Pipeline, run_dir: Path) -> None:
    """Load the policy that scored best at a test step, or the last one if none was kept."""
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


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate one configuration; write config, checkpoint, logs and metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True).encode())
    )
    start = time.perf_counter()
    pipeline = build(cfg)
    setup_seconds = time.perf_counter() - start
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    try:
        summary = pipeline.agent.fit(
            pipeline.env,
            TrainRun(
                trainer=pipeline.trainer,
                logger=pipeline.logger,
                seed=int(cfg.seed),
                writer=writer,
                save_checkpoint=lambda epoch: save_checkpoint(
                    pipeline, checkpoint_path(run_dir), epoch
                ),
                save_best=lambda: save_checkpoint(pipeline, checkpoint_path(run_dir, "best"), None),
            ),
        )
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
        "eval": results,
    }
    write_json(run_dir / "metrics.json", metrics)
    print_table(results, title=f"{cfg.agent.name} on {cfg.data.name} ({run_dir})")
    return metrics


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
    history = p.data.history_before(user, "test")
    if p.data.split.test_item[user] >= 0:
        history = np.append(history, p.data.split.test_item[user])
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


def print_table(results: dict[str, dict[str, float]], title: str) -> None:
    """Test-split ranking metrics and simulated-session figures, one row per policy."""
    first = next(iter(results.values()))
    columns = [c for c in first if c.startswith("test/") or c in SHORT_NAMES]
    terms = [c for c in first if c.startswith("sim/reward/")]
    columns += terms if len(terms) > 1 else []
    table = Table(title=title)
    table.add_column("policy")
    for column in columns:
        table.add_column(SHORT_NAMES.get(column, column.split("/", 1)[1]), justify="right")
    for policy, row in results.items():
        table.add_row(policy, *(f"{row[c]:.4f}" for c in columns))
    Console(width=160).print(table)
