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
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from marlrec.agents import checkpoint_path
from marlrec.evaluation.harness import (
    agent_actor,
    baseline_actor,
    evaluate_policies,
    play_sessions,
    ranking_eval,
)
from marlrec.evaluation.rankers import Ranker, agent_ranker, baseline_ranker
from marlrec.io import atomic_path, atomic_write, remove_temp_files, write_json
from marlrec.pipeline import Pipeline, build, privacy_settings
from marlrec.privacy import check_key_outside
from marlrec.recommend import load_run, restore_best
from marlrec.registry import MarlrecError
from marlrec.report import (
    print_history,
    print_table,
    write_interest_map,
    write_learning_curve,
    write_role_shares,
)
from marlrec.retrieval.recall import pool_recalls
from marlrec.settings import TrainRun
from marlrec.threads import fit_threads, register_job
from marlrec.training.checkpoint import load_training_state
from marlrec.training.imitation import imitate
from marlrec.training.logs import restore_event_files
from marlrec.training.loop import fit
from marlrec.training.meter import UpdateMeter, measured_updates

log = logging.getLogger(__name__)

AGENT_ROW = "agent"
# Offsets of the seeds of simulated sessions from the run's seed: the evaluation's, and the
# validation's (`trainer.select=return`), apart from each other and from training's.
EVAL_SESSIONS, VALID_SESSIONS = 20_000, 10_000
TRAIN_STATE = "train_state.pt"
# Keys a resumed run may set differently from the run it continues.
RESUME_FREE_KEYS = ("trainer.resume", "trainer.show_progress", "device", "cache_dir")


def save_checkpoint(pipeline: Pipeline, path: Path, epoch: int | None) -> None:
    with atomic_path(path) as tmp:
        torch.save({"epoch": epoch, "agent": pipeline.agent.state_dict()}, tmp)


def evaluate(pipeline: Pipeline, show_progress: bool = True) -> dict[str, dict[str, float]]:
    """The trained agent and every baseline through the same harness."""
    p = pipeline
    rankers: dict[str, Ranker] = {AGENT_ROW: agent_ranker(p.env, p.agent)}
    actors = {AGENT_ROW: agent_actor(p.env, p.agent)}
    for name, baseline in p.baselines.items():
        rankers[name] = baseline_ranker(baseline)
        actors[name] = baseline_actor(p.env, baseline)
    seed = int(p.cfg.seed) + EVAL_SESSIONS  # sessions unseen in training and in its test steps
    return evaluate_policies(
        p.data, p.env, rankers, actors, p.eval, seed, show_progress=show_progress
    )


def validation_return(pipeline: Pipeline) -> Callable[[], float] | None:
    """The current policy's mean return over the validation sessions, when the best checkpoint
    is chosen by it (`trainer.select=return`): the same sessions at every validation, apart
    from the evaluation's."""
    p = pipeline
    if p.trainer.select != "return":
        return None
    actor = agent_actor(p.env, p.agent)
    seed = int(p.cfg.seed) + VALID_SESSIONS

    def validate_return() -> float:
        tally = play_sessions(p.env, actor, p.trainer.valid_sessions, seed)
        return float(tally.statistics["return"].mean())

    return validate_return


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


def resumable_config(
    cfg: DictConfig, run_dir: Path, overrides: list[str], defaults: DictConfig
) -> DictConfig:
    """The config a run continues with: with `trainer.resume`, the one saved in its run dir.

    What this command sets beyond RESUME_FREE_KEYS (the keys its `overrides` name, and those
    where `cfg` differs from the `defaults` no override touched, as a preset sets them) must
    agree with the saved config; a resumed run needs none of the original command line's.
    """
    if not cfg.trainer.resume:
        return cfg
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        raise MarlrecError(
            f"cannot resume {run_dir}: it holds no config.yaml, so no run started there; "
            "leave out trainer.resume=true to start one"
        )
    saved = OmegaConf.load(saved_file)
    if not isinstance(saved, DictConfig):
        raise MarlrecError(f"cannot resume {run_dir}: {saved_file} is not a marlrec config")
    before, now = _flat(saved), _flat(cfg)
    named = [_override_key(o) for o in overrides]
    differing = [
        key
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key) and _set_by_command(key, named, now, _flat(defaults))
    ]
    if differing:
        raise MarlrecError(
            f"cannot resume {run_dir}: its config has {_listed(before, differing)}, this "
            f"command {_listed(now, differing)}; resume with the same settings or with "
            "trainer.resume=true alone"
        )
    for key in RESUME_FREE_KEYS:
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    return saved


def _set_by_command(key: str, named: list[str], now: dict[str, Any], defaults: dict) -> bool:
    if any(key == n or key.startswith(f"{n}.") for n in named):
        return True
    return key in now and now[key] != defaults.get(key, _ABSENT)


_ABSENT = object()


def _override_key(override: str) -> str:
    """The key or group an override names: `agent.lr` of `++agent.lr=1`, `agent` of
    `agent=ippo`."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0].replace("/", ".")


def _listed(flat: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key}={flat.get(key)!r}" for key in keys)


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


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate one configuration; write config, checkpoints, logs, plot and metrics.

    With `trainer.resume=true`, training continues from `checkpoints/train_state.pt` in
    `run_dir` when there is one, to the same results as an uninterrupted run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    check_key_outside(privacy_settings(cfg), run_dir)
    atomic_write(
        run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True).encode())
    )
    state_path = checkpoint_path(run_dir).with_name(TRAIN_STATE)
    saved = resume_point(cfg, run_dir, state_path)
    resuming = saved is not None
    if not resuming:
        # A fresh run must never fall back on a best checkpoint some earlier run left here.
        checkpoint_path(run_dir, "best").unlink(missing_ok=True)
    register_job()
    fit_threads(int(cfg.trainer.threads))
    start = time.perf_counter()
    pipeline = build(cfg, create_key=True)
    setup_seconds = time.perf_counter() - start
    threads = fit_threads(pipeline.trainer.threads)
    writer = SummaryWriter(str(run_dir / "tensorboard"))

    def end_of_epoch(epoch: int) -> None:
        save_checkpoint(pipeline, checkpoint_path(run_dir), epoch)
        # Jobs started beside this one since the last epoch take their share of the cores.
        fit_threads(pipeline.trainer.threads)

    try:
        run = TrainRun(
            trainer=pipeline.trainer,
            logger=pipeline.logger,
            seed=int(cfg.seed),
            writer=writer,
            save_checkpoint=end_of_epoch,
            save_best=lambda: save_checkpoint(pipeline, checkpoint_path(run_dir, "best"), None),
            validate=validation(pipeline),
            validate_return=validation_return(pipeline),
            state_path=state_path,
            saved_state=saved,
        )
        with measured_updates(pipeline.device) as meter:
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
        "threads": threads,
        # fit() reports every figure as a float; a flag is stored as the boolean it is.
        "train": {**summary, "stopped_early": bool(summary.get("stopped_early"))},
        "history": run.history,
        "eval": results,
        "retrieval": retrieval_recall(pipeline),
        "scores_unseen_items": scores_unseen_items(pipeline),
        "privacy": privacy_report(pipeline, summary),
        "encoder": encoder_report(pipeline, meter),
    }
    write_json(run_dir / "metrics.json", metrics)
    if run.history:
        write_learning_curve(run.history, run_dir / "learning_curve.png")
        best = summary.get("best_valid_epoch")
        print_history(run.history, None if best is None else int(best))
    write_role_shares(results, run_dir / "roles.png")
    write_interest_map(pipeline, run_dir / "interest_map.png", seed=int(cfg.seed))
    print_table(results, title=f"{cfg.agent.name} on {cfg.data.name} ({run_dir})")
    return metrics


def encoder_report(pipeline: Pipeline, meter: UpdateMeter) -> dict[str, Any]:
    """The encoder's mode, and the run's time per update and peak memory (to compare modes)."""
    tower = pipeline.env.ctx.item_tower
    report: dict[str, Any] = {
        "trainable": str(pipeline.cfg.encoder.get("trainable", "frozen")),
        **meter.summary(),
    }
    if tower is not None:
        report |= {
            "trainable_parameters": tower.trainable_parameters,
            "encoder_updates": tower.updates,
            "refreshes": tower.refreshes,
            "refresh_seconds": tower.refresh_seconds,
        }
    return report


def scores_unseen_items(pipeline: Pipeline) -> dict[str, bool]:
    """Per policy, whether it can rank items without training interactions (cold items): the
    agents through their retriever, each baseline by its own flag."""
    flags = {AGENT_ROW: pipeline.env.ctx.retriever.scores_unseen_items}
    return flags | {name: b.scores_unseen_items for name, b in pipeline.baselines.items()}


def privacy_report(pipeline: Pipeline, summary: dict[str, Any]) -> dict[str, Any]:
    """Whether ids were pseudonymised, and the (ε, δ) that DP-SGD spent, if it ran."""
    dp = pipeline.privacy.dp
    report: dict[str, Any] = {"pseudonymised": pipeline.privacy.pseudonymise}
    if dp.enabled:
        spent = {k.removeprefix("dp_"): v for k, v in summary.items() if k.startswith("dp_")}
        report["dp"] = {
            "target_epsilon": dp.epsilon,
            **spent,
            "covers": "the agents' scoring networks (imitation, user-level)",
        }
    return report


def resume_point(cfg: DictConfig, run_dir: Path, state_path: Path) -> dict[str, Any] | None:
    """The training state a run starting in `run_dir` continues from, if any.

    First the leftovers of a killed run go: temporary files of writes it did not finish, and
    with `trainer.resume` the TensorBoard points it logged after its last training state
    (all of them when it saved none: the run then starts over), which the run logs again.
    """
    stale = remove_temp_files(run_dir)
    if stale:
        log.info("removed %d temporary files a killed write left in %s", len(stale), run_dir)
    if not cfg.trainer.resume:
        return None
    saved = load_training_state(state_path)
    sizes = {} if saved is None else saved.get("event_files")
    if sizes is not None:  # None: a state saved before event files were recorded
        restore_event_files(run_dir / "tensorboard", sizes)
    return saved


def retrieval_recall(pipeline: Pipeline) -> dict[str, float]:
    """Recall of the held-out items in the retrieved pools of the env's size (M candidates)."""
    ctx = pipeline.env.ctx
    size = pipeline.env.spec.layout.n_candidates
    return pool_recalls(
        ctx.retriever, ctx.data, lambda h: ctx.state.from_histories(h, ctx.item_emb), size
    )


def imitation_summary(
    pipeline: Pipeline, run: TrainRun, run_dir: Path, resuming: bool
) -> dict[str, float]:
    """Imitation's figures: a fresh run imitates and saves them; a resumed run, whose restored
    networks imitation already shaped, reads them back."""
    saved = run_dir / "checkpoints" / "imitation.json"
    if resuming:
        return json.loads(saved.read_text()) if saved.is_file() else {}
    if pipeline.privacy.dp.enabled:
        from marlrec.training.dp import check_dp_supported

        check_dp_supported(pipeline.agent)
    summary = imitate(pipeline.agent, pipeline.env, run, pipeline.privacy.dp)
    write_json(saved, summary)
    return summary


def evaluate_run(run_dir: Path) -> dict[str, dict[str, float]]:
    """Re-evaluate a saved run; the figures go to a new file, never over earlier ones."""
    pipeline = load_run(run_dir)
    results = evaluate(pipeline)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    write_json(run_dir / "evaluations" / f"{stamp}.json", results)
    print_table(results, title=f"re-evaluation of {run_dir}")
    return results
