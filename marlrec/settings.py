"""Settings groups shared by every run: `trainer` and `logger`, and what an agent is handed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch.utils.tensorboard import SummaryWriter


@dataclass(kw_only=True)
class TrainerConfig:
    """The `trainer` config group: how long and how to train, whatever the agent."""

    max_epochs: int = 10
    """Training epochs; a checkpoint and a test step follow each."""
    epoch_num_env_steps: int = 2000
    """Environment steps (one per slot filled) collected per epoch."""
    collect_num_env_steps: int = 64
    """Environment steps collected between two update phases."""
    updates_per_env_step: float = 0.25
    """Gradient steps per collected environment step (off-policy agents)."""
    update_repetitions: int = 4
    """Passes over each collected batch of episodes (on-policy agents)."""
    batch_size: int = 128
    """Transitions per gradient step."""
    buffer_size: int = 20000
    """Replay buffer capacity in transitions (off-policy agents)."""
    num_train_envs: int = 4
    """Environment copies stepped together while collecting."""
    vector_env: Literal["dummy", "subproc"] = "dummy"
    """`dummy` steps copies in this process, `subproc` in worker processes."""
    test_episodes: int = 50
    """Sessions run at each epoch's test step."""
    show_progress: bool = True
    """Show progress bars."""


@dataclass(kw_only=True)
class LoggerConfig:
    """The `logger` config group."""

    backend: Literal["tensorboard"] = "tensorboard"
    """Where training scalars go: TensorBoard event files in the run dir."""
    interval_env_steps: int = 100
    """Env steps between two logged training points."""


@dataclass
class TrainRun:
    """What the training glue hands an agent: settings, a seed, and where to write."""

    trainer: TrainerConfig
    logger: LoggerConfig
    seed: int
    writer: SummaryWriter
    save_checkpoint: Callable[[int], None]  # called with the epoch number after each epoch
    save_best: Callable[[], None]  # called when a test step scores the best return so far
