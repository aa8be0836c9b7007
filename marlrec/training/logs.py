"""TensorBoard logging: the checkpointed logger and the reward terms' means per slate."""

from __future__ import annotations

import math
import os
from pathlib import Path

from tianshou.env import BaseVectorEnv
from tianshou.utils import TensorboardLogger
from torch.utils.tensorboard import SummaryWriter

LOGGER_FIELDS = (
    "last_log_training_step",
    "last_log_test_step",
    "last_log_update_step",
    "last_log_info_step",
)


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


EVENT_FILES = "events.out.tfevents.*"


def event_file_sizes(writer: SummaryWriter) -> dict[str, int]:
    """The size of every event file under the writer's log dir, all it was asked to write
    included: what a resumed run cuts the files back to."""
    writer.flush()
    root = Path(writer.log_dir)
    return {str(f.relative_to(root)): f.stat().st_size for f in sorted(root.rglob(EVENT_FILES))}


def restore_event_files(root: Path, sizes: dict[str, int]) -> None:
    """Cut the event files under `root` back to `sizes` (from `event_file_sizes`) and remove
    those written since, so a resumed run logs no step twice."""
    for events in sorted(root.rglob(EVENT_FILES)):
        size = sizes.get(str(events.relative_to(root)))
        if size is None:
            events.unlink()
        elif events.stat().st_size > size:
            os.truncate(events, size)


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
