"""Settings groups shared by every run: `trainer` and `logger`, and what an agent is handed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch.utils.tensorboard import SummaryWriter

from marlrec.registry import PluginError

VectorEnvKind = Literal["dummy", "subproc", "ray", "batched"]


@dataclass(kw_only=True)
class TrainerConfig:
    """The `trainer` config group: how long and how to train, whatever the agent."""

    max_epochs: int = 10
    """Training epochs; a test step, a validation and a checkpoint follow each. 0: no
    reinforcement learning, the agents keep what imitation taught (the imitation-only row)."""
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
    vector_env: VectorEnvKind = "batched"
    """`dummy` steps copies in this process, `subproc` in worker processes, `ray` on Ray actors
    (the `ray` extra), `batched` in the env's own tensor-batched vector env (`make_vector`)."""
    imitation_steps: int = 1000
    """Gradient steps of imitation of logged choices before reinforcement learning: each
    role's scoring network learns, by cross-entropy, to pick the user's logged next item among
    the retrieved candidates (a warm start from the training interactions); 0: none."""
    imitation_lr: float = 0.001
    """Adam learning rate of the imitation steps."""
    imitation_steps_per_update: int = 2
    """Imitation steps after each collect-and-update step of RL, on fresh batches of logged
    choices: imitation goes on as an auxiliary loss, so that RL adds to what it taught instead
    of eroding it; 0: imitation only before RL. Ignored when `imitation_steps` is 0 (no
    imitation at all: RL from scratch)."""
    imitation_cache_mb: int = 1024
    """Memory for imitation data computed once: when the state model and the retrieval are
    fixed, every logged position's candidates, state and recent items are precomputed (the
    positions whose logged item is retrieved), so that a step only draws its turns; beyond
    this many megabytes, or with a trainable state model, each step retrieves the positions it
    draws. The same batches either way; 0: always per step."""
    test_episodes: int = 50
    """Sessions run at each epoch's test step, all at once: one env copy each (batched where
    the env has `make_vector`), seeded from the run's seed and the epoch."""
    eval_every_epochs: int = 1
    """Epochs between two validations (valid NDCG@10 of the current policy), which keep the
    best checkpoint and drive early stopping; the last epoch is always validated. 0: never."""
    patience: int = 0
    """Validations without a new best before training stops early; 0: never stop early."""
    select: Literal["ndcg", "return"] = "ndcg"
    """What the best checkpoint keeps. `ndcg`: the validated epoch of highest valid NDCG@10.
    `return`: each validation also plays `valid_sessions` simulated sessions (seeded apart from
    the test step's and the evaluation's), and the best is the epoch of highest mean return
    among those whose valid NDCG@10 is within `select_tolerance` of the highest seen so far: a
    session objective under a floor on ranking quality. Decided online, as each epoch is
    validated: an epoch that raises the highest NDCG@10 past the best's floor takes its place."""
    select_tolerance: float = 0.02
    """With `select=return`: how far below the highest valid NDCG@10, relatively, an epoch's
    may lie and still be chosen for its return."""
    valid_sessions: int = 1000
    """With `select=return`: simulated sessions played at each validation."""
    validate_after_imitation: bool = True
    """Validate the policy imitation left, before the first RL epoch, as epoch 0: a candidate
    for the best checkpoint like any validated epoch, and the first validation `patience`
    counts from, so that RL which erodes what imitation taught cannot displace it. Only when
    imitation ran (`imitation_steps` > 0) and RL follows (`max_epochs` > 0) with validation
    on (`eval_every_epochs` > 0)."""
    resume: bool = False
    """Continue the run in this run dir from its last epoch checkpoint (same configuration);
    starts afresh when the dir holds no checkpoint yet."""
    autocast_bf16: bool = False
    """Run the networks' forward passes of gradient updates under bfloat16 autocast."""
    threads: int = 0
    """Torch and BLAS threads of this process; 0: its share of the cores it may use, divided
    among the marlrec jobs running on the machine (re-checked at every epoch)."""
    show_progress: bool = True
    """Show progress bars (a line per epoch is logged either way)."""

    def __post_init__(self) -> None:
        positive = (
            "epoch_num_env_steps",
            "collect_num_env_steps",
            "update_repetitions",
            "batch_size",
            "buffer_size",
            "num_train_envs",
            "test_episodes",
            "valid_sessions",
        )
        for key in positive:
            if getattr(self, key) < 1:
                raise PluginError(f"trainer.{key} must be at least 1, got {getattr(self, key)}")
        for key in (
            "max_epochs",
            "eval_every_epochs",
            "patience",
            "imitation_steps",
            "imitation_steps_per_update",
            "imitation_cache_mb",
            "threads",
        ):
            if getattr(self, key) < 0:
                raise PluginError(f"trainer.{key} must be 0 or more, got {getattr(self, key)}")
        if not 0.0 <= self.select_tolerance < 1.0:
            raise PluginError(
                f"trainer.select_tolerance must lie in [0, 1), got {self.select_tolerance}"
            )
        if self.imitation_lr <= 0:
            raise PluginError(f"trainer.imitation_lr must be positive, got {self.imitation_lr}")
        if self.updates_per_env_step <= 0:
            raise PluginError(
                f"trainer.updates_per_env_step must be positive, got {self.updates_per_env_step}"
            )


@dataclass(kw_only=True)
class LoggerConfig:
    """The `logger` config group."""

    backend: Literal["tensorboard"] = "tensorboard"
    """Where training scalars go: TensorBoard event files in the run dir."""
    interval_env_steps: int = 100
    """Env steps between two logged training points (returns, losses, reward terms)."""

    def __post_init__(self) -> None:
        if self.interval_env_steps < 1:
            raise PluginError(
                f"logger.interval_env_steps must be at least 1, got {self.interval_env_steps}"
            )


@dataclass
class TrainRun:
    """What the training glue hands an agent: settings, a seed, where to write, and hooks.

    The shared loop (`marlrec.training.loop.train_with_tianshou`) calls the hooks and fills
    `history`; agents only pass the run through.
    """

    trainer: TrainerConfig
    logger: LoggerConfig
    seed: int
    writer: SummaryWriter
    save_checkpoint: Callable[[int], None]  # called with the epoch number after each epoch
    save_best: Callable[[], None]  # called when a validation sets a new best
    validate: Callable[[], float] | None = None  # the current policy's valid NDCG@10
    # The current policy's mean return over validation sessions (`trainer.select=return`).
    validate_return: Callable[[], float] | None = None
    state_path: Path | None = None  # the resumable training state, rewritten every epoch
    saved_state: dict[str, Any] | None = None  # the state to continue from, if already read
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    imitated: bool = False  # set by imitate() once its steps ran: epoch 0 can be validated
