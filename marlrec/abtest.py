"""`marlrec abtest`: two trained runs in simulated sessions with the same users and the same random
numbers, and on the same users' held-out items, and what the difference between them is worth.

Each run plays `users` sessions in its own environment, for one session plan: the users and each
session's seed are drawn once from `seed`. Where both runs configure the same simulator, the
simulated users also draw the same random numbers (common random numbers), so the paired
differences carry the policies' effect and little of the simulator's noise. Both runs then rank
every item for each user with a held-out validation and test item (run A's ranking protocol),
paired by user.

Per metric (return, clicks, session length in slates, the slates' diversity and novelty; HR and
NDCG on each split): the mean of B - A with a bootstrap 95% interval over sessions or users, the
paired t-test's p-value, and the number of sessions or users a paired test needs to detect the
observed difference (two-sided alpha 0.05, power 0.8).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from omegaconf import OmegaConf
from scipy import stats

from marlrec.evaluation.harness import (
    EvalConfig,
    agent_actor,
    agent_ranker,
    per_user_accuracy,
    play_sessions,
)
from marlrec.io import atomic_path, write_json
from marlrec.pipeline import Pipeline
from marlrec.recommend import load_run
from marlrec.registry import MarlrecError

log = logging.getLogger(__name__)

# Metric label -> the per-session statistic it reads.
METRICS = {
    "return": "return",
    "clicks": "clicks",
    "session length": "depth",
    "diversity": "diversity",
    "novelty": "novelty",
}
# The held-out accuracy metrics compared user by user, on each split.
HELD_OUT_METRICS = ["hr", "ndcg"]
SPLITS: tuple[Literal["valid", "test"], ...] = ("valid", "test")
# Sessions seeded apart from training (seed + i), its test steps and its evaluation (+ 20,000).
SESSION_SEED_OFFSET = 30_000
ALPHA, POWER, RESAMPLES = 0.05, 0.8, 10_000


@dataclass(frozen=True)
class Comparison:
    """One metric of B against A over paired sessions or users."""

    metric: str
    over: str  # what the paired samples are: "sessions" or "users"
    mean_a: float
    mean_b: float
    difference: float  # mean of B - A
    low: float  # bootstrap 95% interval of the difference
    high: float
    p_value: float  # paired t-test
    needed: int | None  # sessions or users to detect this difference; None when it is zero


def paired_p_value(a: ArrayLike, b: ArrayLike, alternative: str = "two-sided") -> float:
    """The paired t-test's p-value of B against A. Where every difference is the same, t is
    undefined and the difference certain: 0 when it lies the alternative's way, else 1."""
    differences = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(differences) < 2 or differences.std(ddof=1) == 0.0:
        mean = differences.mean()
        its_way = {"two-sided": mean != 0.0, "greater": mean > 0.0, "less": mean < 0.0}
        return 0.0 if its_way[alternative] else 1.0
    return float(stats.ttest_rel(b, a, alternative=alternative).pvalue)


def compare_paired(
    metric: str, a: np.ndarray, b: np.ndarray, seed: int, over: str = "sessions"
) -> Comparison:
    """The paired comparison of two samples of one metric, per session or per user (`over`)."""
    differences = b - a
    mean = float(differences.mean())
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(differences), (RESAMPLES, len(differences)))
    low, high = np.quantile(differences[drawn].mean(axis=1), [0.025, 0.975])
    spread = float(differences.std(ddof=1)) if len(differences) > 1 else 0.0
    p_value = paired_p_value(a, b)
    needed = None
    if mean != 0.0:
        z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)
        needed = max(2, math.ceil((z * spread / abs(mean)) ** 2))
    return Comparison(
        metric,
        over,
        float(a.mean()),
        float(b.mean()),
        mean,
        float(low),
        float(high),
        p_value,
        needed,
    )


def abtest(run_a: Path, run_b: Path, users: int, seed: int) -> dict[str, Any]:
    """Both runs' sessions for the same plan, compared metric by metric."""
    a, b = load_run(run_a), load_run(run_b)
    _check_same_data(a, b)
    session_seed = seed + SESSION_SEED_OFFSET
    samples = [
        play_sessions(p.env, agent_actor(p.env, p.agent), users, session_seed).per_session()
        for p in (a, b)
    ]
    same_simulator = OmegaConf.to_container(a.cfg.simulator) == OmegaConf.to_container(
        b.cfg.simulator
    )
    if not same_simulator:
        log.warning("abtest: the runs' simulators differ, so only the users are common")
    comparisons = [
        compare_paired(label, samples[0][key], samples[1][key], seed)
        for label, key in METRICS.items()
        if key in samples[0] and key in samples[1]
    ]
    held_out = [held_out_per_user(p, a.eval, seed) for p in (a, b)]
    if {k: len(v) for k, v in held_out[0].items()} != {k: len(v) for k, v in held_out[1].items()}:
        raise MarlrecError("run_a and run_b hold out different users: compare runs of one protocol")
    comparisons += [
        compare_paired(key.replace("/", " "), held_out[0][key], held_out[1][key], seed, "users")
        for key in held_out[0]
    ]
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "sessions": users,
        "held_out_users": max(len(values) for values in held_out[0].values()),
        "seed": seed,
        "common_random_numbers": same_simulator,
        "comparisons": [asdict(c) for c in comparisons],
    }


def held_out_per_user(p: Pipeline, protocol: EvalConfig, seed: int) -> dict[str, np.ndarray]:
    """The run's HR@10 and NDCG@10 per user on each split, `{split}/{metric}@10`, ranked under
    `protocol`'s ranking settings; `seed` draws the sampled protocol's negatives."""
    cfg = dataclasses.replace(protocol, metrics=HELD_OUT_METRICS, ks=[10])
    ranker = agent_ranker(p.env, p.agent)
    figures: dict[str, np.ndarray] = {}
    for split in SPLITS:
        values = per_user_accuracy(p.data, ranker, split, cfg, seed=seed)
        figures.update({f"{split}/{key}": value for key, value in values.items()})
    return figures


def _check_same_data(a: Pipeline, b: Pipeline) -> None:
    shape_a = (a.data.name, a.data.n_users, a.data.n_items)
    shape_b = (b.data.name, b.data.n_users, b.data.n_items)
    if shape_a != shape_b:
        raise MarlrecError(
            f"run_a and run_b must be trained on the same data to share users: "
            f"{shape_a[0]} ({shape_a[1]} users, {shape_a[2]} items) vs "
            f"{shape_b[0]} ({shape_b[1]} users, {shape_b[2]} items)"
        )


def write_report(report: dict[str, Any], out: Path, force: bool) -> None:
    """`abtest.json` and `abtest.png` in `out`; an earlier report is kept unless `force`."""
    if (out / "abtest.json").exists() and not force:
        raise MarlrecError(f"{out / 'abtest.json'} exists; choose another out=... or force=true")
    write_json(out / "abtest.json", report)
    plot(report, out / "abtest.png")


def plot(report: dict[str, Any], path: Path) -> None:
    """Each metric's difference relative to A's mean, with its 95% interval and p-value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["comparisons"]
    figure = Figure(figsize=(7, 1 + 0.6 * len(rows)))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    for y, row in enumerate(rows):
        scale = 100 / abs(row["mean_a"]) if row["mean_a"] else 0.0
        mid, low, high = (row[k] * scale for k in ("difference", "low", "high"))
        axis.errorbar(mid, y, xerr=[[mid - low], [high - mid]], fmt="o", color="C0", capsize=4)
        axis.annotate(
            f"p={row['p_value']:.3g}",
            (high, y),
            xytext=(6, -3),
            fontsize=8,
            textcoords="offset points",
        )
    axis.axvline(0.0, color="grey", linewidth=1)
    axis.margins(x=0.15)  # room for the p-values right of the widest interval
    axis.set_yticks(range(len(rows)), [row["metric"] for row in rows])
    axis.invert_yaxis()
    axis.set_xlabel("B - A, % of A's mean (bootstrap 95% interval)")
    figure.suptitle(
        f"A/B test over {report['sessions']} simulated sessions "
        f"and {report['held_out_users']} users' held-out items"
    )
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
