"""`hydra/sweeper=optuna`: a hyperparameter search that maximises a run's validation metric.

Each trial is one `marlrec train` job whose overrides Optuna's sampler chose from the search space
(`hydra.sweeper.params`, and any sweep override on the command line such as
`agent.lr='tag(log, interval(1e-5, 1e-3))'`). The trial's value is read from its run's
`metrics.json` (a validation metric: selecting on test would leak it). The study lives in SQLite,
so re-running the same command continues it: trials a killed search left running are marked
failed and run again. At the end the sweep dir gets `best.yaml` (the best trial's overrides) and
`best_metrics.json` (its validation and test metrics).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
)
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.marlrec_sweeps.errors import fail
from marlrec.io import atomic_write, write_json

log = logging.getLogger(__name__)
SAMPLERS = ("tpe", "random")
DIRECTIONS = ("maximize", "minimize")
# A trial that a killed search left running is run again once, under this attribute.
RETRY_OF = "retry_of"


def distribution(override: Override) -> Any:
    """The Optuna distribution of a sweep override (`choice`, `range`, `interval`, with
    `tag(log, ...)` for a log scale and `tag(int, interval(...))` for whole numbers); None for a
    plain value."""
    import optuna.distributions as dist

    value = override.value()
    log_scale = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        # Optuna stores plain values; a list or mapping choice goes as the text Hydra parses.
        plain = (bool, int, float, str)
        return dist.CategoricalDistribution(
            [v if v is None or isinstance(v, plain) else str(v) for v in value.list]
        )
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if start is None or stop is None or not step or (stop - start) / step <= 0:
            raise ValueError(f"'{override.input_line}' is an empty range")
        last = start + step * math.ceil((stop - start) / step - 1)
        if all(isinstance(v, int) for v in (start, stop, step)):
            return dist.IntDistribution(int(start), int(last), step=int(step))
        return dist.FloatDistribution(float(start), float(last), step=float(step))
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low is None or high is None or low >= high:
            raise ValueError(f"'{override.input_line}' needs start < end")
        if "int" in value.tags:  # Hydra parses interval bounds as floats
            return dist.IntDistribution(int(low), int(high), log=log_scale)
        return dist.FloatDistribution(float(low), float(high), log=log_scale)
    if override.is_sweep_override():
        raise ValueError(f"'{override.input_line}': use choice, range or interval")
    return None


def search_space(params: dict[str, Any], arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The distributions to sample, by key, and the overrides every trial shares.

    The preset's `params` come first; the command line's overrides replace them key by key.
    """
    lines = [f"{key}={value}" for key, value in params.items()]
    try:
        parsed = OverridesParser.create().parse_overrides([*lines, *arguments])
    except HydraException as exc:
        fail(f"cannot parse the search space: {' '.join(str(exc).split())}")
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        try:
            found = distribution(override)
        except ValueError as exc:
            fail(f"hydra.sweeper.params: {exc}")
        if found is None:
            fixed[key] = str(override.input_line)
        else:
            space[key] = found
    return space, list(fixed.values())


def override_line(key: str, value: Any) -> str:
    # Floats as Python writes them back (1e-05), which Hydra parses to the same number.
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


class OptunaSweeper(Sweeper):
    """Ask Optuna for trials, run them through the launcher, tell Optuna their values."""

    def __init__(
        self,
        study_name: str,
        storage: str,
        metric: str,
        policy: str,
        direction: str,
        n_trials: int,
        n_jobs: int,
        sampler: str,
        seed: int,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.study_name, self.storage = study_name, Path(storage)
        self.metric, self.policy, self.direction = metric, policy, direction
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_name, self.seed = sampler, seed
        self.params = dict(params or {})
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self._check_options()

    def _check_options(self) -> None:
        if not self.metric.startswith("valid/"):
            fail(
                f"hydra.sweeper.metric must be a validation metric (valid/...), got "
                f"'{self.metric}': a search that selects on test reports a leaked score"
            )
        if self.direction not in DIRECTIONS:
            fail(f"hydra.sweeper.direction must be one of {', '.join(DIRECTIONS)}")
        if self.sampler_name not in SAMPLERS:
            fail(f"hydra.sweeper.sampler must be one of {', '.join(SAMPLERS)}")
        if self.n_trials < 1 or self.n_jobs < 1:
            fail("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be at least 1")
        if not self.study_name:
            fail("hydra.sweeper.study_name must not be empty")

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = search_space(self.params, arguments)
        if not space:
            fail("nothing to search: give hydra.sweeper.params or a sweep override")
        study = self._study()
        self._retry_stale(study)
        while (todo := self.n_trials - self._done(study)) > 0:
            trials = [study.ask(space) for _ in range(min(todo, self.n_jobs))]
            batch = [
                [*fixed, *(override_line(k, v) for k, v in trial.params.items())]
                for trial in trials
            ]
            for trial, result in zip(trials, self._launch(batch, trials[0].number), strict=True):
                self._tell(study, trial, result)
        self._write_best(study, fixed)

    def _study(self) -> Any:
        import optuna

        self.storage.parent.mkdir(parents=True, exist_ok=True)
        sampler = (
            optuna.samplers.TPESampler(seed=self.seed)
            if self.sampler_name == "tpe"
            else optuna.samplers.RandomSampler(seed=self.seed)
        )
        url = f"sqlite:///{self.storage.resolve()}"
        existing = optuna.study.get_all_study_names(url) if self.storage.is_file() else []
        if self.study_name not in existing:
            self._check_sweep_dir_unused()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=url,
            sampler=sampler,
            direction="maximize" if self.direction == "maximize" else "minimize",
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            fail(
                f"study '{self.study_name}' in {self.storage} was created to "
                f"{study.direction.name.lower()}; hydra.sweeper.direction={self.direction}"
            )
        log.info("study '%s' in %s: %d trial(s) so far", self.study_name, url, len(study.trials))
        return study

    def _check_sweep_dir_unused(self) -> None:
        """A new study never writes its trials over the run dirs of an earlier one."""
        taken = sorted(self.sweep_dir.glob("*/metrics.json")) if self.sweep_dir.is_dir() else []
        if taken:
            fail(
                f"{self.sweep_dir} holds runs of another search ({taken[0].parent.name}/...) but "
                f"{self.storage} has no study '{self.study_name}'; choose another "
                "hydra.sweep.dir or hydra.sweeper.study_name"
            )

    def _retry_stale(self, study: Any) -> None:
        """Trials a killed search left running: marked failed, and their parameters run again
        (once: a retry that was itself killed is not retried)."""
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)
            if RETRY_OF not in trial.user_attrs:
                study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
            log.info("trial %d was left running: marked failed", trial.number)

    def _done(self, study: Any) -> int:
        """Trials that count towards n_trials: finished ones, and queued retries' originals
        don't count (their retry will)."""
        from optuna.trial import TrialState

        finished = study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        )
        retried = {t.user_attrs[RETRY_OF] for t in study.trials if RETRY_OF in t.user_attrs}
        return len([t for t in finished if t.number not in retried])

    def _launch(self, batch: list[list[str]], first: int) -> Sequence[JobReturn | None]:
        """Run the batch; a job that ends the process (a bad config, a plugin's error) fails
        its trials rather than the search."""
        assert self.launcher is not None
        self.validate_batch_is_legal(batch)
        try:
            return self.launcher.launch(batch, initial_job_idx=first)
        except (Exception, SystemExit) as exc:
            log.error("trials %d-%d failed: %s", first, first + len(batch) - 1, exc)
            return [None] * len(batch)

    def _tell(self, study: Any, trial: Any, result: JobReturn | None) -> None:
        from optuna.trial import TrialState

        metrics = self._metrics(result)
        value = metrics.get(self.metric) if metrics is not None else None
        if value is None or not math.isfinite(value):
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: no finite %s", trial.number, self.metric)
            return
        trial.set_user_attr("run_dir", str(self._run_dir(result)))
        trial.set_user_attr("metrics", metrics)
        study.tell(trial, float(value))
        log.info("trial %d: %s=%.4f %s", trial.number, self.metric, value, trial.params)

    def _run_dir(self, result: JobReturn | None) -> Path | None:
        if result is None or result.hydra_cfg is None:
            return None
        return Path(str(result.hydra_cfg.hydra.runtime.output_dir))

    def _metrics(self, result: JobReturn | None) -> dict[str, float] | None:
        """The policy's validation and test metrics from the trial's `metrics.json`."""
        run_dir = self._run_dir(result)
        if result is None or result.status != JobStatus.COMPLETED or run_dir is None:
            return None
        path = run_dir / "metrics.json"
        if not path.is_file():
            return None
        row = json.loads(path.read_text()).get("eval", {}).get(self.policy)
        if row is None:
            fail(f"hydra.sweeper.policy: {path} has no policy '{self.policy}'")
        if self.metric not in row:
            fail(f"hydra.sweeper.metric: {path} has no '{self.metric}' for '{self.policy}'")
        return {k: v for k, v in row.items() if k.startswith(("valid/", "test/"))}

    def _write_best(self, study: Any, fixed: list[str]) -> None:
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            fail(f"study '{self.study_name}': no trial completed; see the trials' train.log")
        best = study.best_trial
        overrides = [*fixed, *(override_line(k, v) for k, v in best.params.items())]
        summary = {
            "study": self.study_name,
            "trial": best.number,
            "metric": self.metric,
            "value": best.value,
            "run_dir": best.user_attrs.get("run_dir"),
            "params": best.params,
            "overrides": overrides,
        }
        text = yaml.safe_dump(summary, sort_keys=False)
        atomic_write(self.sweep_dir / "best.yaml", lambda f: f.write(text.encode()))
        metrics = best.user_attrs.get("metrics", {})
        write_json(
            self.sweep_dir / "best_metrics.json",
            {
                "study": self.study_name,
                "trial": best.number,
                "run_dir": best.user_attrs.get("run_dir"),
                "valid": {k: v for k, v in metrics.items() if k.startswith("valid/")},
                "test": {k: v for k, v in metrics.items() if k.startswith("test/")},
            },
        )
        log.info(
            "best of %d trial(s): trial %d, %s=%.4f; wrote %s and %s",
            len(study.trials),
            best.number,
            self.metric,
            best.value,
            self.sweep_dir / "best.yaml",
            self.sweep_dir / "best_metrics.json",
        )
        print(OmegaConf.to_yaml(OmegaConf.create(summary)), end="")
