"""The options of `hydra/sweeper=optuna` and `hydra/launcher=ray`, one dataclass each.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module outside
`sys.modules`, where dataclasses cannot resolve string annotations.
"""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    """`hydra.sweeper.*` of an Optuna search (see `marlrec/conf/hparams_search/`)."""

    _target_: str = "hydra_plugins.marlrec_sweeps.optuna_sweeper.OptunaSweeper"
    # The study's name; its trials are kept in `storage`, so re-running a search continues it.
    study_name: str = "${hydra.job.name}"
    # SQLite file of the study (relative to the launch directory).
    storage: str = "outputs/optuna/${.study_name}.db"
    # A validation metric of the run's `metrics.json` (`eval.<policy>.<metric>`): never test.
    metric: str = "valid/NDCG@10"
    policy: str = "agent"
    direction: str = "maximize"
    # Trials of the whole study: a resumed search runs only the ones still missing.
    n_trials: int = 20
    # Trials launched together (in parallel with a launcher that runs jobs in parallel).
    n_jobs: int = 1
    # tpe (Optuna's default) or random; seeded by `seed` for a reproducible search.
    sampler: str = "tpe"
    seed: int = 0
    # key: search space, e.g. `agent.lr: tag(log, interval(1e-5, 1e-3))`, `agent.hidden:
    # choice(64, 128)`, `trainer.n: range(1, 5)`; a plain value fixes the key for every trial.
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class RayLauncherConf:
    """`hydra.launcher.*` of multirun jobs on Ray (`hydra/launcher=ray`)."""

    _target_: str = "hydra_plugins.marlrec_sweeps.ray_launcher.RayLauncher"
    # A running cluster (`ray start --head` prints it; "auto": the one this machine belongs to);
    # empty: the RAY_ADDRESS environment variable, else a new local Ray instance.
    address: str = "${oc.env:RAY_ADDRESS,''}"
    # CPUs and GPUs of a new local instance (null: Ray counts the machine's).
    num_cpus: int | None = None
    num_gpus: int | None = None
    # Resources Ray reserves per job; a job with `trainer.threads=0` (auto) uses as many threads
    # as its CPUs here, so jobs together never ask for more cores than the cluster has.
    cpus_per_job: int = 1
    gpus_per_job: float = 0.0


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="marlrec"
)
ConfigStore.instance().store(
    group="hydra/launcher", name="ray", node=RayLauncherConf, provider="marlrec"
)
