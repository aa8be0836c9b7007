"""`hydra/launcher=ray`: every multirun job as a Ray task, on a cluster or a local instance.

The launcher connects to `hydra.launcher.address` (or `RAY_ADDRESS`), else starts a local Ray
instance, and runs the jobs of a batch at once, as many in parallel as the cluster's CPUs allow.
Each job reserves `cpus_per_job` CPUs and sizes its torch threads to them. Jobs write their run
dirs where they run: on a cluster of several machines, `hydra.sweep.dir` must be a shared path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def run_one(
    hydra_context: HydraContext,
    task_function: TaskFunction,
    config: DictConfig,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """One job inside a Ray worker: Hydra's globals as in the driver, then Hydra's `run_job`."""
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(config)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class RayLauncher(Launcher):
    def __init__(
        self,
        address: str = "",
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        cpus_per_job: int = 1,
        gpus_per_job: float = 0.0,
    ) -> None:
        self.address = address or None
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.cpus_per_job, self.gpus_per_job = cpus_per_job, gpus_per_job
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError:
            raise ImportError("hydra/launcher=ray needs Ray: pip install 'marlrec[ray]'") from None
        if not ray.is_initialized():
            if self.address is None:
                # "local": a new instance, never a cluster an earlier `ray start` left recorded.
                ray.init(
                    address="local",
                    num_cpus=self.num_cpus,
                    num_gpus=self.num_gpus,
                    include_dashboard=False,
                )
            else:
                ray.init(address=self.address)
            log.info("Ray resources: %s", ray.cluster_resources())
        return ray

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        if self.cpus_per_job < 1:
            raise ValueError(
                f"hydra.launcher.cpus_per_job must be at least 1, got {self.cpus_per_job}"
            )
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        ray = self._connect()
        task = ray.remote(run_one).options(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job)
        log.info("Launching %d jobs on Ray", len(job_overrides))
        state = Singleton.get_state()
        pending = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            config = self._job_config(idx, overrides)
            pending.append(task.remote(self.hydra_context, self.task_function, config, state))
        return list(ray.get(pending))

    def _job_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = f"ray_{idx}"
            config.hydra.job.num = idx
            # Auto threads would count the cores of the whole machine: use the job's CPUs.
            trainer = config.get("trainer")
            if isinstance(trainer, DictConfig) and trainer.get("threads") == 0:
                trainer.threads = self.cpus_per_job
        return config
