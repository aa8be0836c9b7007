"""The Tianshou training loop every agent shares: env copies, collectors, trainer, checkpoints.

Each epoch runs Tianshou's collect-and-update steps and its test step, then validates the
current policy (valid NDCG@10 through the evaluation harness) every `eval_every_epochs` epochs,
which keeps the best checkpoint and drives early stopping, then writes the epoch checkpoint.

Resuming is exact. Every epoch starts from a state that the epoch checkpoint holds in full: the
train env copies are re-seeded from (seed, epoch) and start new sessions, so no env internals
need saving, and the checkpoint keeps the algorithm (networks, target networks, optimisers and
counters), the replay buffer, the trainer's, collectors' and logger's counters, the RNG states,
the best validation so far and the epoch history. A run killed at any point and resumed from its
last checkpoint reaches the same final metrics as one never interrupted. Sessions still open
when an epoch ends are closed in the buffer as truncated, so no target crosses into the next.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from numba.core.dispatcher import Dispatcher
from pettingzoo import AECEnv
from tianshou.algorithm import algorithm_base
from tianshou.algorithm.algorithm_base import Algorithm
from tianshou.data import Collector, EpochStats, InfoStats, ReplayBuffer, VectorReplayBuffer
from tianshou.data.buffer import manager as buffer_manager
from tianshou.data.utils import segtree
from tianshou.env import (
    BaseVectorEnv,
    DummyVectorEnv,
    PettingZooEnv,
    RayVectorEnv,
    SubprocVectorEnv,
)
from tianshou.trainer import (
    OffPolicyTrainer,
    OffPolicyTrainerParams,
    OnPolicyTrainer,
    OnPolicyTrainerParams,
)
from tianshou.utils import TensorboardLogger
from tianshou.utils.torch_utils import torch_train_mode
from torch.utils.tensorboard import SummaryWriter

from marlrec.envs import Environment
from marlrec.io import atomic_write
from marlrec.registry import MarlrecError
from marlrec.settings import TrainerConfig, TrainRun

log = logging.getLogger(__name__)

# Called by the trainer before each collect step with (epoch, env_step), e.g. to decay
# exploration. It must depend on its arguments only: a resumed run calls it afresh.
TrainingHook = Callable[[int, int], None]
# Builds the replay buffer: (total capacity, number of env copies) -> buffer.
BufferFactory = Callable[[int, int], ReplayBuffer]

VALID_METRIC = "valid/NDCG@10"
STATE_FORMAT = 1
TRAIN_STREAM, TEST_STREAM = 0, 1
TRAINER_FIELDS = (
    "_best_score",
    "_best_reward",
    "_best_reward_std",
    "_best_epoch",
    "_policy_update_time",
    "_env_episode",
    "_stat",
)
COLLECTOR_FIELDS = ("collect_step", "collect_episode", "collect_time")
LOGGER_FIELDS = (
    "last_log_training_step",
    "last_log_test_step",
    "last_log_update_step",
    "last_log_info_step",
)


def cache_tianshou_jit() -> None:
    """Let numba keep Tianshou's JIT-compiled buffer and return helpers on disk.

    Tianshou compiles them in every process, which takes tens of seconds on two CPU cores; with
    numba's cache that happens once per machine. Without a writable cache dir they stay as is.
    """
    for module in (buffer_manager, algorithm_base, segtree):
        for value in vars(module).values():
            if isinstance(value, Dispatcher):
                with contextlib.suppress(RuntimeError):  # no writable cache location
                    value.enable_caching()


cache_tianshou_jit()


# ---------------------------------------------------------------------------------------------
# Env copies


class MarlrecPettingZooEnv(PettingZooEnv, gym.Env):
    """Tianshou's PettingZoo wrapper, also a gymnasium Env, that tallies the reward terms.

    Being a `gym.Env` lets `RayVectorEnv` wrap it under gymnasium 1.x. An env publishes a
    scored slate's terms as one `info["reward_terms"]` dict, shared by the agents' infos; each
    such dict is counted once into `reward_term_totals` and `scored_slates`, which the loop
    reads through the vector env at logging points, away from the stepping hot loop.
    """

    def __init__(self, env: AECEnv) -> None:
        self.reward_term_totals: dict[str, float] = {}
        self.scored_slates = 0
        self._counted: Any = None
        super().__init__(env)

    def step(self, action: Any) -> tuple[dict, list[int], bool, bool, dict]:
        obs, rewards, terminated, truncated, info = super().step(action)
        terms = info.get("reward_terms") if isinstance(info, dict) else None
        if terms is not None and terms is not self._counted:
            self._counted = terms  # kept alive, so a later dict cannot reuse its identity
            self.scored_slates += 1
            for name, value in terms.items():
                total = self.reward_term_totals.get(name, 0.0)
                self.reward_term_totals[name] = total + float(value)
        return obs, rewards, terminated, truncated, info


def tianshou_env(env: Environment) -> Any:
    """One env copy as Tianshou steps it: AEC envs wrapped for Tianshou, gymnasium ones as is."""
    made = env.make()
    return MarlrecPettingZooEnv(made) if hasattr(made, "agent_iter") else made


@dataclass(frozen=True)
class EnvCopies:
    """A picklable factory of env copies, for subprocess and Ray workers."""

    env: Environment

    def __call__(self) -> Any:
        return tianshou_env(self.env)


def vector_envs(env: Environment, run: TrainRun) -> tuple[BaseVectorEnv, BaseVectorEnv]:
    """Training env copies of the configured kind, and one in-process test copy."""
    copies = EnvCopies(env)
    return train_vector_env(env, copies, run.trainer), DummyVectorEnv([copies])


def train_vector_env(env: Environment, copies: EnvCopies, t: TrainerConfig) -> BaseVectorEnv:
    n = t.num_train_envs
    if t.vector_env == "subproc":
        # Spawned workers rebuild the env from its pickle. Forking a process whose torch thread
        # pools are running can deadlock the child, and forked workers cannot use CUDA.
        return SubprocVectorEnv([copies] * n, context="spawn")
    if t.vector_env == "ray":
        if importlib.util.find_spec("ray") is None:
            raise MarlrecError(
                "trainer.vector_env=ray needs Ray, which is not installed: "
                "pip install 'marlrec[ray]' (or use trainer.vector_env=subproc)"
            )
        return RayVectorEnv([copies] * n)
    if t.vector_env == "batched":
        make_vector = getattr(env, "make_vector", None)
        if make_vector is None:
            raise MarlrecError(
                f"trainer.vector_env=batched needs an env with make_vector(num_envs), but "
                f"{type(env).__name__} has none: use trainer.vector_env=dummy or subproc"
            )
        return make_vector(n)
    return DummyVectorEnv([copies] * n)


def epoch_seeds(seed: int, epoch: int, stream: int, n: int) -> list[int]:
    """Seeds for n env copies at an epoch, independent across epochs and streams."""
    return [int(s) for s in np.random.SeedSequence([seed, stream, epoch]).generate_state(n)]


def close_open_episodes(buffer: ReplayBuffer) -> None:
    """Mark every env copy's unfinished session in the buffer as truncated.

    Called before the env copies start new sessions in mid-session, so that no transition links
    the old session to the new one and the next episode's return starts from zero.
    """
    subbuffers = list(getattr(buffer, "buffers", [buffer]))
    for sub, last in zip(subbuffers, buffer.last_index, strict=True):
        if len(sub) and not buffer.done[last]:
            for key in ("truncated", "done"):
                buffer.set_array_at_key(np.array([True]), key, index=np.array([last]))
        # Tianshou keeps the running episode's statistics on each sub-buffer.
        sub._ep_return, sub._ep_len, sub._ep_start_idx = 0.0, 0, sub._insertion_idx


def default_buffer(seed: int) -> BufferFactory:
    return lambda size, n: VectorReplayBuffer(size, n, random_seed=seed)


# ---------------------------------------------------------------------------------------------
# What a checkpoint holds


def algorithm_state(algorithm: Algorithm) -> dict[str, Any]:
    """Networks, target networks, optimisers, LR schedulers and scalar counters.

    Tianshou's `Algorithm.state_dict` keeps only its own optimisers, not those of the
    per-agent algorithms inside a multi-agent one, nor counters such as DQN's update count.
    """
    opt_key = Algorithm._STATE_DICT_KEY_OPTIMIZERS
    tensors = torch.nn.Module.state_dict(algorithm)
    algorithms = _algorithms(algorithm)
    return {
        "tensors": {k: v for k, v in tensors.items() if k.rsplit(".", 1)[-1] != opt_key},
        "optimizers": {n: [o.state_dict() for o in a._optimizers] for n, a in algorithms.items()},
        "schedulers": {n: [s.state_dict() for s in a.lr_schedulers] for n, a in algorithms.items()},
        "scalars": {name: _scalars(m) for name, m in algorithm.named_modules()},
    }


def load_algorithm_state(algorithm: Algorithm, state: dict[str, Any]) -> None:
    torch.nn.Module.load_state_dict(algorithm, state["tensors"])
    for name, member in _algorithms(algorithm).items():
        for optim, saved in zip(member._optimizers, state["optimizers"][name], strict=True):
            optim.load_state_dict(saved)
        for scheduler, saved in zip(member.lr_schedulers, state["schedulers"][name], strict=True):
            scheduler.load_state_dict(saved)
    modules = dict(algorithm.named_modules())
    for name, scalars in state["scalars"].items():
        for key, value in scalars.items():
            setattr(modules[name], key, value)


def _algorithms(algorithm: Algorithm) -> dict[str, Algorithm]:
    return {name: m for name, m in algorithm.named_modules() if isinstance(m, Algorithm)}


def _scalars(module: torch.nn.Module) -> dict[str, bool | int | float]:
    """A module's plain scalar attributes (update counters, exploration rates, flags)."""
    return {
        key: value
        for key, value in vars(module).items()
        if type(value) in (bool, int, float) and key != "training"
    }


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: Path) -> dict[str, Any] | None:
    """The training state saved at the end of the last finished epoch, if any."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a foreign or damaged file: say which, not where in pickle
        raise MarlrecError(f"cannot read the training state {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise MarlrecError(f"{path} is not a training state this marlrec version can resume")
    return state


def relink_buffer(buffer: ReplayBuffer) -> ReplayBuffer:
    """After unpickling, point a vector buffer's sub-buffers at its storage again."""
    relink = getattr(buffer, "_set_batch_for_children", None)
    if relink is not None and buffer._meta.get_keys():
        relink()
    return buffer


# ---------------------------------------------------------------------------------------------
# Logging


class CheckpointLogger(TensorboardLogger):
    """Tianshou's TensorBoard logger whose resume point comes from the epoch checkpoint.

    Tianshou resumes (`resume_from_log`) by reading the epoch and step counters back from the
    event files; here they come from the checkpoint that holds everything else, so they can
    never disagree with the restored networks and buffer.
    """

    def __init__(
        self, writer: SummaryWriter, interval_env_steps: int, update_interval: int
    ) -> None:
        super().__init__(
            writer,
            training_interval=interval_env_steps,
            update_interval=update_interval,
            save_interval=None,
        )
        self.resume_point: dict[str, int] | None = None

    def restore_data(self) -> tuple[int, int, int]:
        if self.resume_point is None:
            return 0, 0, 0
        point = self.resume_point
        for key in LOGGER_FIELDS:
            setattr(self, key, point[key])
        return point["epoch"], point["env_step"], point["gradient_step"]

    def counters(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in LOGGER_FIELDS}


class RewardTermLog:
    """Each reward term's mean per scored slate in training, read from the train env copies."""

    def __init__(self, envs: BaseVectorEnv, writer: SummaryWriter, interval: int) -> None:
        self.envs, self.writer, self.interval = envs, writer, interval
        self._base: tuple[dict[str, float], int] = ({}, 0)
        self._last_step = -math.inf

    def _read(self) -> tuple[dict[str, float], int]:
        try:
            totals = self.envs.get_env_attr("reward_term_totals")
            slates = self.envs.get_env_attr("scored_slates")
        except AttributeError:  # env copies that do not tally terms
            return {}, 0
        summed: dict[str, float] = {}
        for copy in totals:
            for name, value in (copy or {}).items():
                summed[name] = summed.get(name, 0.0) + value
        return summed, sum(s or 0 for s in slates)

    def restart(self) -> None:
        self._base = self._read()

    def log(self, env_step: int, force: bool = False) -> None:
        if not force and env_step - self._last_step < self.interval:
            return
        totals, slates = self._read()
        base_totals, base_slates = self._base
        if slates > base_slates:
            for name, total in totals.items():
                mean = (total - base_totals.get(name, 0.0)) / (slates - base_slates)
                self.writer.add_scalar(f"train/reward/{name}", mean, env_step)
        self._base, self._last_step = (totals, slates), env_step


# ---------------------------------------------------------------------------------------------
# The loop around Tianshou's trainer


@dataclass
class LoopProgress:
    """What the loop tracks beyond Tianshou's trainer; saved in every checkpoint."""

    best_valid: float = -math.inf
    best_valid_epoch: int = 0
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
    ) -> None:
        self.algorithm, self.run, self.logger, self.saved = algorithm, run, logger, saved
        self.train_collector, self.test_collector = collectors
        self.training_hook = training_hook
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
        """Every test step plays the same seeded sessions, whenever the run was resumed."""
        envs = self.test_collector.env
        envs.seed(epoch_seeds(self.run.seed, epoch, TEST_STREAM, envs.env_num))
        self.test_collector.reset_env()

    # Around each epoch

    def start_epoch(self, epoch: int) -> None:
        envs = self.train_collector.env
        envs.seed(epoch_seeds(self.run.seed, epoch, TRAIN_STREAM, envs.env_num))
        close_open_episodes(self.train_collector.buffer)
        self.train_collector.reset_env()
        self.reward_terms.restart()

    def end_epoch(self, trainer: Any, stats: EpochStats) -> bool:
        """Validate, keep the best, checkpoint and report; whether to stop early."""
        epoch, env_step = trainer._epoch, trainer._env_step
        record: dict[str, Any] = {"epoch": epoch, "env_step": env_step}
        test = stats.test_collect_stat
        if test is not None and test.returns_stat is not None:
            record["test_return"] = float(test.returns_stat.mean)
        if self._validates(epoch):
            record[VALID_METRIC] = self._validate(epoch, env_step)
        self.reward_terms.log(env_step, force=True)
        now = time.perf_counter()
        self.progress.train_seconds += now - self._clock
        self._clock = now
        self.progress.history.append(record)
        self.save(trainer)
        self.run.save_checkpoint(epoch)
        self._report(record)
        return self.progress.stopped_early

    def _validates(self, epoch: int) -> bool:
        every = self.run.trainer.eval_every_epochs
        last = epoch == self.run.trainer.max_epochs
        return self.run.validate is not None and every > 0 and (epoch % every == 0 or last)

    def _validate(self, epoch: int, env_step: int) -> float:
        assert self.run.validate is not None
        with torch_train_mode(self.algorithm, enabled=False), torch.no_grad():
            score = float(self.run.validate())
        self.run.writer.add_scalar(VALID_METRIC, score, env_step)
        p = self.progress
        if score > p.best_valid:
            p.best_valid, p.best_valid_epoch, p.validations_without_improvement = score, epoch, 0
            self.run.save_best()
        else:
            p.validations_without_improvement += 1
        patience = self.run.trainer.patience
        p.stopped_early = patience > 0 and p.validations_without_improvement >= patience
        return score

    def _report(self, record: dict[str, Any]) -> None:
        p, t = self.progress, self.run.trainer
        parts = [f"epoch {record['epoch']}/{t.max_epochs}", f"{record['env_step']} env steps"]
        if "test_return" in record:
            parts.append(f"test return {record['test_return']:.3f}")
        if VALID_METRIC in record:
            parts.append(
                f"{VALID_METRIC} {record[VALID_METRIC]:.4f} "
                f"(best {p.best_valid:.4f} at epoch {p.best_valid_epoch})"
            )
        if p.stopped_early:
            parts.append(f"stopping early: no better validation in the last {t.patience}")
        log.info(", ".join(parts))

    # Checkpoints

    def save(self, trainer: Any) -> None:
        path = self.run.state_path
        if path is None:
            return
        buffer = self.train_collector.buffer
        state = {
            "format": STATE_FORMAT,
            "epoch": trainer._epoch,
            "env_step": trainer._env_step,
            "gradient_step": trainer._current_update_step,
            "algorithm": algorithm_state(self.algorithm),
            # An emptied buffer (on-policy agents clear it every update) is rebuilt, not saved.
            "buffer": buffer if len(buffer) else None,
            "trainer": {key: getattr(trainer, key) for key in TRAINER_FIELDS},
            "collectors": [
                {key: getattr(c, key) for key in COLLECTOR_FIELDS}
                for c in (self.train_collector, self.test_collector)
            ],
            "logger": self.logger.counters(),
            "progress": asdict(self.progress),
            "rng": rng_state(),
        }
        atomic_write(path, lambda f: torch.save(state, f))

    def restore_trainer(self, trainer: Any) -> None:
        """Counters and RNG states of the checkpoint, right before the next epoch begins."""
        assert self.saved is not None
        for key, value in self.saved["trainer"].items():
            setattr(trainer, key, value)
        for collector, counters in zip(
            (self.train_collector, self.test_collector), self.saved["collectors"], strict=True
        ):
            for key, value in counters.items():
                setattr(collector, key, value)
        trainer._stop_fn_flag = self.progress.stopped_early
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
            "epochs": float(len(p.history)),
            "stopped_early": float(p.stopped_early),
        }
        if p.best_valid_epoch:
            summary["best_" + VALID_METRIC.replace("/", "_")] = p.best_valid
            summary["best_valid_epoch"] = float(p.best_valid_epoch)
        return summary


class _LoopTrainer:
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
        self._start_epoch, self._env_step, self._current_update_step = self._logger.restore_data()  # type: ignore[attr-defined]
        self._epoch = self._start_epoch
        self._start_time = time.time()
        self.loop.restore_trainer(self)

    def execute_epoch(self) -> EpochStats:
        self.loop.start_epoch(self._epoch + 1)  # type: ignore[attr-defined]
        stats: EpochStats = super().execute_epoch()  # type: ignore[misc]
        if self.loop.end_epoch(self, stats):
            self._stop_fn_flag = True
        return stats

    def _update_step(self, collect_stats: Any) -> Any:
        with self.loop.autocast():
            return super()._update_step(collect_stats)  # type: ignore[misc]


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
) -> dict[str, float]:
    """Collect from env copies and update `algorithm` for the run's epochs; summary figures.

    With `run.trainer.resume` and a training state at `run.state_path`, training continues from
    it. `make_buffer` replaces the default `VectorReplayBuffer` (e.g. a prioritised one).
    """
    t = run.trainer
    saved = load_training_state(run.state_path) if t.resume and run.state_path else None
    if saved is not None:
        load_algorithm_state(algorithm, saved["algorithm"])
        log.info("resuming after epoch %d (%d env steps)", saved["epoch"], saved["env_step"])
    train_envs, test_envs = vector_envs(env, run)
    try:
        if saved is not None and saved["buffer"] is not None:
            buffer = relink_buffer(saved["buffer"])
        else:
            buffer = (make_buffer or default_buffer(run.seed))(t.buffer_size, train_envs.env_num)
        collectors = (
            Collector(algorithm.policy, train_envs, buffer, exploration_noise=True),
            Collector(algorithm.policy, test_envs),
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
        loop = TrainingLoop(algorithm, run, collectors, logger, saved, training_hook)
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
        show_progress=t.show_progress,
    )
    if off_policy:
        return OffPolicyTrainerParams(
            update_step_num_gradient_steps_per_sample=t.updates_per_env_step, **common
        )
    return OnPolicyTrainerParams(update_step_num_repetitions=t.update_repetitions, **common)
