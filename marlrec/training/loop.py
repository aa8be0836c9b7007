"""The Tianshou training loop every agent shares: env copies, collectors, trainer, checkpoints.

Each epoch runs Tianshou's collect-and-update steps and its test step, then validates the
current policy (valid NDCG@10 through the evaluation harness) every `eval_every_epochs` epochs,
which keeps the best checkpoint and drives early stopping, then writes the epoch checkpoint.
With `trainer.select=return` a validation also plays simulated sessions, and the best is the
epoch of highest return among those whose NDCG@10 is near the highest.
When imitation warmed the agents up, the policy it left is validated first, as epoch 0
(`trainer.validate_after_imitation`): RL epochs that erode what imitation taught then cannot
displace it from the best checkpoint, and patience counts from it.

Resuming is exact. Every epoch starts from a state that the epoch checkpoint holds in full: the
train env copies are re-seeded from (seed, epoch) and start new sessions, so no env internals
need saving, and the checkpoint keeps the algorithm (networks, target networks, optimisers and
counters), the replay buffer, the trainer's, collectors' and logger's counters, the RNG states,
the best validation so far and the epoch history (epoch 0's included, so a resumed run neither
validates it again nor loses it as the best). A run killed at any point and resumed from its
last checkpoint reaches the same final metrics as one never interrupted. Sessions still open
when an epoch ends are closed in the buffer as truncated, so no target crosses into the next.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tianshou.algorithm.algorithm_base import Algorithm
from tianshou.data import Collector, EpochStats, InfoStats
from tianshou.trainer import (
    OffPolicyTrainer,
    OffPolicyTrainerParams,
    OnPolicyTrainer,
    OnPolicyTrainerParams,
)
from tianshou.utils.torch_utils import torch_train_mode

from marlrec.agents import Agent, BufferFactory, TrainingHook
from marlrec.envs import Environment
from marlrec.io import atomic_write
from marlrec.progress import live
from marlrec.settings import TrainerConfig, TrainRun
from marlrec.tianshou_compat import (
    TrainerCounters,
    UpdateContextTrainer,
    relink_buffer,
    restore_trainer_statistics,
    resume_trainer_counters,
    stop_training,
    trainer_counters,
    trainer_statistics,
)
from marlrec.training.anchor import ImitationAnchor
from marlrec.training.checkpoint import (
    COLLECTOR_FIELDS,
    STATE_FORMAT,
    algorithm_state,
    load_algorithm_state,
    load_training_state,
    rng_state,
    set_rng_state,
)
from marlrec.training.logs import CheckpointLogger, RewardTermLog, event_file_sizes
from marlrec.training.vector_envs import (
    TEST_STREAM,
    TRAIN_STREAM,
    close_open_episodes,
    default_buffer,
    epoch_seeds,
    session_buffer,
    vector_envs,
)

log = logging.getLogger(__name__)

VALID_METRIC = "valid/NDCG@10"
VALID_RETURN = "valid/return"


def epoch_name(epoch: int) -> str:
    """An epoch as logs and tables print it: epoch 0 is the policy right after imitation."""
    return "0 (after imitation)" if epoch == 0 else str(epoch)


@dataclass
class LoopProgress:
    """What the loop tracks beyond Tianshou's trainer; saved in every checkpoint."""

    best_valid: float = -math.inf  # the best epoch's valid NDCG@10
    best_valid_epoch: int = 0
    best_valid_return: float = -math.inf  # its validation return (`select=return`)
    validations_without_improvement: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class TrainingLoop:
    """Per-epoch steps around Tianshou's trainer: seeding, validation, checkpoints, logs."""

    def __init__(
        self,
        algorithm: Algorithm,
        run: TrainRun,
        collectors: tuple[Collector, Collector],
        logger: CheckpointLogger,
        saved: dict[str, Any] | None,
        training_hook: TrainingHook | None,
        anchor: ImitationAnchor | None = None,
    ) -> None:
        self.algorithm, self.run, self.logger, self.saved = algorithm, run, logger, saved
        self.train_collector, self.test_collector = collectors
        self.training_hook = training_hook
        self.anchor = anchor
        if anchor is not None and saved is not None and saved.get("anchor") is not None:
            anchor.load_state_dict(saved["anchor"])
        self.progress = LoopProgress(**saved["progress"]) if saved else LoopProgress()
        # The run's history list is filled in place, so the caller sees it after training.
        run.history[:] = self.progress.history
        self.progress.history = run.history
        self.reward_terms = RewardTermLog(
            self.train_collector.env, run.writer, run.logger.interval_env_steps
        )
        self.device = next(algorithm.parameters()).device
        self._clock = time.perf_counter()

    # Tianshou trainer hooks

    def training_fn(self, epoch: int, env_step: int) -> None:
        if self.training_hook is not None:
            self.training_hook(epoch, env_step)
        self.reward_terms.log(env_step)

    def test_fn(self, epoch: int, env_step: int | None) -> None:
        """Every test step plays the same seeded sessions, whenever the run was resumed: one
        session on each test copy, all copies stepped together."""
        envs = self.test_collector.env
        envs.seed(epoch_seeds(self.run.seed, epoch, TEST_STREAM, envs.env_num))
        self.test_collector.reset_env()

    def after_update(self) -> None:
        """After each collect-and-update step: imitation keeps what it taught (if set)."""
        if self.anchor is not None:
            self.anchor.step(self.run.trainer.imitation_steps_per_update)

    # Around each epoch

    def start_epoch(self, epoch: int) -> None:
        envs = self.train_collector.env
        envs.seed(epoch_seeds(self.run.seed, epoch, TRAIN_STREAM, envs.env_num))
        close_open_episodes(self.train_collector.buffer)
        self.train_collector.reset_env()
        self.reward_terms.restart()

    def end_epoch(self, trainer: Any, stats: EpochStats) -> bool:
        """Validate, keep the best, checkpoint and report; whether to stop early."""
        counters = trainer_counters(trainer)
        epoch, env_step = counters.epoch, counters.env_step
        record: dict[str, Any] = {"epoch": epoch, "env_step": env_step}
        test = stats.test_collect_stat
        if test is not None and test.returns_stat is not None:
            record["test_return"] = float(test.returns_stat.mean)
        if self._validates(epoch):
            record.update(self._validate(epoch, env_step))
        record.update(role_losses(stats))
        self.reward_terms.log(env_step, force=True)
        now = time.perf_counter()
        self.progress.train_seconds += now - self._clock
        self._clock = now
        self.progress.history.append(record)
        # The agent first: a kill between the two leaves the state of the epoch before, and
        # the resumed run then writes this epoch's agent again, identically.
        self.run.save_checkpoint(epoch)
        self.save(trainer)
        self._report(record)
        return self.progress.stopped_early

    def validate_after_imitation(self) -> None:
        """Epoch 0: on a fresh run whose agents imitation warmed up, validate the policy before
        the first RL epoch, exactly as an epoch is validated (a candidate for the best
        checkpoint), and record it. A resumed run holds it in its saved progress already."""
        if self.saved is not None or not self.run.imitated:
            return
        if not (self.run.trainer.validate_after_imitation and self._validates(0)):
            return
        record: dict[str, Any] = {"epoch": 0, "env_step": 0, **self._validate(0, 0)}
        self.progress.history.append(record)
        self._report(record)

    def _validates(self, epoch: int) -> bool:
        every = self.run.trainer.eval_every_epochs
        last = epoch == self.run.trainer.max_epochs
        return self.run.validate is not None and every > 0 and (epoch % every == 0 or last)

    def _validate(self, epoch: int, env_step: int) -> dict[str, float]:
        """Valid NDCG@10 (and return, when selecting by it); keeps the best checkpoint."""
        run = self.run
        assert run.validate is not None
        figures: dict[str, float] = {}
        with torch_train_mode(self.algorithm, enabled=False), torch.no_grad():
            figures[VALID_METRIC] = float(run.validate())
            if run.trainer.select == "return" and run.validate_return is not None:
                figures[VALID_RETURN] = float(run.validate_return())
        for key, value in figures.items():
            run.writer.add_scalar(key, value, env_step)
        p = self.progress
        if self._is_new_best(figures):
            p.best_valid, p.best_valid_epoch = figures[VALID_METRIC], epoch
            p.best_valid_return = figures.get(VALID_RETURN, -math.inf)
            p.validations_without_improvement = 0
            run.save_best()
        else:
            p.validations_without_improvement += 1
        patience = run.trainer.patience
        p.stopped_early = patience > 0 and p.validations_without_improvement >= patience
        return figures

    def _is_new_best(self, figures: dict[str, float]) -> bool:
        """`select=ndcg`: a higher valid NDCG@10. `select=return`: within the tolerance of the
        highest valid NDCG@10 so far, and a higher return than the best's, or the best fell
        below that floor (this epoch raised the highest NDCG@10: it is the one above it)."""
        p, ndcg = self.progress, figures[VALID_METRIC]
        if VALID_RETURN not in figures:
            return ndcg > p.best_valid
        # This epoch's record joins the history after its validation.
        highest = max([r[VALID_METRIC] for r in p.history if VALID_METRIC in r] + [ndcg])
        floor = (1.0 - self.run.trainer.select_tolerance) * highest
        if p.best_valid < floor:
            return True
        return ndcg >= floor and figures[VALID_RETURN] > p.best_valid_return

    def _report(self, record: dict[str, Any]) -> None:
        p, t, epoch = self.progress, self.run.trainer, record["epoch"]
        at = f"{epoch}/{t.max_epochs}" if epoch else epoch_name(epoch)
        parts = [f"epoch {at}", f"{record['env_step']} env steps"]
        if "test_return" in record:
            parts.append(f"test return {record['test_return']:.3f}")
        if VALID_METRIC in record:
            parts.append(f"{VALID_METRIC} {record[VALID_METRIC]:.4f}")
            if VALID_RETURN in record:
                parts.append(f"{VALID_RETURN} {record[VALID_RETURN]:.3f}")
            parts.append(f"best {p.best_valid:.4f} at epoch {epoch_name(p.best_valid_epoch)}")
        if p.stopped_early:
            parts.append(f"stopping early: no better validation in the last {t.patience}")
        log.info(", ".join(parts))

    # Checkpoints

    def save(self, trainer: Any) -> None:
        path = self.run.state_path
        if path is None:
            return
        buffer = self.train_collector.buffer
        counters = trainer_counters(trainer)
        state = {
            "format": STATE_FORMAT,
            "epoch": counters.epoch,
            "env_step": counters.env_step,
            "gradient_step": counters.gradient_step,
            "algorithm": algorithm_state(self.algorithm),
            # An emptied buffer (on-policy agents clear it every update) is rebuilt, not saved.
            "buffer": buffer if len(buffer) else None,
            "trainer": trainer_statistics(trainer),
            "collectors": [
                {key: getattr(c, key) for key in COLLECTOR_FIELDS}
                for c in (self.train_collector, self.test_collector)
            ],
            "logger": self.logger.counters(),
            "progress": asdict(self.progress),
            "rng": rng_state(),
            "anchor": self.anchor.state_dict() if self.anchor is not None else None,
            "event_files": event_file_sizes(self.run.writer),
        }
        atomic_write(path, lambda f: torch.save(state, f))

    def restore_trainer(self, trainer: Any) -> None:
        """Counters and RNG states of the checkpoint, right before the next epoch begins."""
        assert self.saved is not None
        restore_trainer_statistics(trainer, self.saved["trainer"])
        for collector, counters in zip(
            (self.train_collector, self.test_collector), self.saved["collectors"], strict=True
        ):
            for key, value in counters.items():
                setattr(collector, key, value)
        stop_training(trainer, self.progress.stopped_early)
        set_rng_state(self.saved["rng"])
        self._clock = time.perf_counter()

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if not self.run.trainer.autocast_bf16:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            yield

    def summary(self, stats: InfoStats) -> dict[str, float]:
        p = self.progress
        seconds = max(p.train_seconds, 1e-9)
        summary = {
            "train_seconds": p.train_seconds,
            "train_env_steps": float(stats.train_step),
            "train_env_steps_per_second": stats.train_step / seconds,
            "best_test_return": float(stats.best_reward),
            # RL epochs: epoch 0 (the validation after imitation) trained nothing.
            "epochs": float(sum(1 for record in p.history if record["epoch"] > 0)),
            "stopped_early": float(p.stopped_early),
        }
        if p.best_valid > -math.inf:  # some validation ran; the best may be epoch 0
            summary["best_" + VALID_METRIC.replace("/", "_")] = p.best_valid
            summary["best_valid_epoch"] = float(p.best_valid_epoch)
            if p.best_valid_return > -math.inf:
                summary["best_valid_return"] = p.best_valid_return
        return summary


class _LoopTrainer(UpdateContextTrainer):
    """Hooks the loop into a Tianshou online trainer (mixed in before the trainer class)."""

    loop: TrainingLoop

    def __init__(self, algorithm: Algorithm, params: Any, loop: TrainingLoop) -> None:
        self.loop = loop
        super().__init__(algorithm, params)  # type: ignore[call-arg]

    def reset(self, reset_collectors: bool = True, reset_collector_buffers: bool = False) -> None:
        if self.loop.saved is None:
            super().reset(reset_collectors, reset_collector_buffers)  # type: ignore[misc]
            return
        # Tianshou's resume_from_log path, without its initial test step: the best so far
        # comes from the checkpoint, and a test step here would shift the RNG streams.
        resume_trainer_counters(self, TrainerCounters(*self.loop.logger.restore_data()))
        self.loop.restore_trainer(self)

    def execute_epoch(self) -> EpochStats:
        self.loop.start_epoch(trainer_counters(self).epoch + 1)
        stats: EpochStats = super().execute_epoch()  # type: ignore[misc]
        if self.loop.end_epoch(self, stats):
            stop_training(self)
        return stats

    def update_context(self) -> contextlib.AbstractContextManager[Any]:
        return self.loop.autocast()

    def after_update(self) -> None:
        self.loop.after_update()


class LoopOffPolicyTrainer(_LoopTrainer, OffPolicyTrainer):
    pass


class LoopOnPolicyTrainer(_LoopTrainer, OnPolicyTrainer):
    pass


def _mean_over_roles(returns: np.ndarray) -> np.ndarray:
    """One return per episode: the roles' returns are (episodes, roles) in multi-agent envs."""
    return returns.mean(axis=1) if returns.ndim == 2 else returns


def train_with_tianshou(
    algorithm: Algorithm,
    env: Environment,
    run: TrainRun,
    *,
    off_policy: bool,
    training_hook: TrainingHook | None = None,
    make_buffer: BufferFactory | None = None,
    anchor: ImitationAnchor | None = None,
) -> dict[str, float]:
    """Collect from env copies and update `algorithm` for the run's epochs; summary figures.

    With `run.trainer.resume` and a training state at `run.state_path`, training continues from
    it. `make_buffer` replaces the default `VectorReplayBuffer` (e.g. a prioritised one);
    `anchor` imitates between updates. After imitation (`run.imitated`), the policy is first
    validated as epoch 0 (`TrainingLoop.validate_after_imitation`).
    """
    t = run.trainer
    saved = run.saved_state
    if saved is None and t.resume and run.state_path:
        saved = load_training_state(run.state_path)
    if saved is not None:
        load_algorithm_state(algorithm, saved["algorithm"])
        log.info(
            "resuming after epoch %s (%d env steps)", epoch_name(saved["epoch"]), saved["env_step"]
        )
    train_envs, test_envs = vector_envs(env, run)
    try:
        if saved is not None and saved["buffer"] is not None:
            buffer = relink_buffer(saved["buffer"])
        else:
            buffer = (make_buffer or default_buffer(run.seed))(t.buffer_size, train_envs.env_num)
        collectors = (
            Collector(algorithm.policy, train_envs, buffer, exploration_noise=True),
            Collector(algorithm.policy, test_envs, session_buffer(env, test_envs.env_num)),
        )
        logger = CheckpointLogger(
            run.writer,
            interval_env_steps=run.logger.interval_env_steps,
            update_interval=max(1, run.logger.interval_env_steps // t.collect_num_env_steps),
        )
        if saved is not None:
            logger.resume_point = {
                "epoch": saved["epoch"],
                "env_step": saved["env_step"],
                "gradient_step": saved["gradient_step"],
                **saved["logger"],
            }
        loop = TrainingLoop(algorithm, run, collectors, logger, saved, training_hook, anchor)
        loop.validate_after_imitation()
        params = _trainer_params(run, collectors, loop, logger, off_policy, saved is not None)
        trainer_class = LoopOffPolicyTrainer if off_policy else LoopOnPolicyTrainer
        # Tianshou warns on every 2-D (episode x role) return array; the reduction handles it.
        logging.getLogger("tianshou.data.stats").setLevel(logging.ERROR)
        stats = trainer_class(algorithm, params, loop).run()
    finally:
        train_envs.close()
        test_envs.close()
    return loop.summary(stats)


def _trainer_params(
    run: TrainRun,
    collectors: tuple[Collector, Collector],
    loop: TrainingLoop,
    logger: CheckpointLogger,
    off_policy: bool,
    resume: bool,
) -> OffPolicyTrainerParams | OnPolicyTrainerParams:
    t = run.trainer
    common: dict[str, Any] = dict(
        training_collector=collectors[0],
        test_collector=collectors[1],
        max_epochs=t.max_epochs,
        epoch_num_steps=t.epoch_num_env_steps,
        collection_step_num_env_steps=t.collect_num_env_steps,
        test_step_num_episodes=t.test_episodes,
        batch_size=t.batch_size,
        training_fn=loop.training_fn,
        test_fn=loop.test_fn,
        multi_agent_return_reduction=_mean_over_roles,
        resume_from_log=resume,
        logger=logger,
        verbose=False,
        show_progress=t.show_progress and live(),
    )
    if off_policy:
        return OffPolicyTrainerParams(
            update_step_num_gradient_steps_per_sample=t.updates_per_env_step, **common
        )
    return OnPolicyTrainerParams(update_step_num_repetitions=t.update_repetitions, **common)


def fit(agent: Agent, env: Environment, run: TrainRun) -> dict[str, float]:
    """Train `agent` on copies of `env` for the run's epochs; summary figures."""
    plan = agent.training_plan(env, run) if run.trainer.max_epochs else None
    if plan is None:  # a fixed policy, or no RL: its checkpoint alone makes the run servable
        run.save_checkpoint(0)
        return {}
    return train_with_tianshou(
        plan.algorithm,
        env,
        run,
        off_policy=plan.off_policy,
        training_hook=plan.training_hook,
        make_buffer=plan.make_buffer,
        anchor=ImitationAnchor(agent, env, run) if imitates_during_rl(run.trainer) else None,
    )


def imitates_during_rl(trainer: TrainerConfig) -> bool:
    """Whether imitation goes on during RL: only after a warm start by imitation, so that
    `trainer.imitation_steps=0` still trains from scratch (and envs without logged choices run)."""
    return trainer.imitation_steps > 0 and trainer.imitation_steps_per_update > 0


def role_losses(stats: EpochStats) -> dict[str, float]:
    """The epoch's last update's losses, `loss/<role>/<name>` (one role's own under multi-agent
    algorithms, `loss/<name>` for a single agent)."""
    if stats.training_stat is None:
        return {}
    losses = stats.training_stat.get_loss_stats_dict()
    return {f"loss/{k}": float(v) for k, v in losses.items() if isinstance(v, int | float)}
