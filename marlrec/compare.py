"""`marlrec compare`: runs side by side, as mean ± std over seeds.

Each directory given is a run dir (it has `metrics.json`) or a multirun dir (run dirs below it).
Runs whose resolved configs are equal but for the seed form a group; within a group, every
policy (the agent and each baseline in `metrics.json`) gets each metric's mean and sample
standard deviation over the group's seeds. The result is printed as a markdown table and
written as `compare.csv`, `compare.json` and one bar plot per chosen metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from marlrec.io import atomic_path, atomic_write, write_json
from marlrec.registry import MarlrecError

# Config keys that say nothing about what was run: left out when grouping runs.
NOT_CONFIG = ("seed", "cache_dir")
# Shown by default, when present: the headline ranking figures and the simulated return.
DEFAULT_METRICS = ("test/HR@10", "test/NDCG@10", "sim/mean_return")
OUTPUTS = ("compare.csv", "compare.json")


@dataclass(frozen=True)
class Run:
    path: Path
    config: dict[str, Any]  # flattened dotted keys; empty when the run has no config.yaml
    seed: int | None
    results: dict[str, dict[str, float]]  # policy -> metric -> value


@dataclass(frozen=True)
class Summary:
    group: str
    policy: str
    metric: str
    mean: float
    std: float
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    def cell(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f}"


def find_runs(dirs: Sequence[Path]) -> list[Run]:
    """Every run under the given run or multirun dirs, in path order."""
    runs = []
    for folder in dirs:
        if not folder.is_dir():
            raise MarlrecError(f"{folder} is not a directory")
        if (folder / "metrics.json").is_file():
            found = [folder]
        else:
            found = sorted(p.parent for p in folder.rglob("metrics.json"))
        if not found:
            raise MarlrecError(f"{folder} holds no run: no metrics.json in it or below it")
        runs += [load_run(path) for path in found]
    return runs


def load_run(path: Path) -> Run:
    metrics_file = path / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text())
        results = metrics["eval"]
        if not isinstance(results, dict):
            raise TypeError("'eval' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MarlrecError(f"{metrics_file}: not a marlrec metrics file ({exc})") from None
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        config = flatten(OmegaConf.to_container(OmegaConf.load(path / "config.yaml")))
    seed = config.get("seed")
    return Run(path, config, int(seed) if seed is not None else None, results)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become tuples so that values can be compared."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(node, list):
        return {prefix[:-1]: tuple(node)}
    return {prefix[:-1]: node}


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by their config minus the seed, each group under a readable label."""
    by_config: dict[tuple[tuple[str, str], ...], list[Run]] = {}
    for run in runs:
        key = tuple(
            sorted((k, repr(v)) for k, v in run.config.items() if k.split(".")[0] not in NOT_CONFIG)
        )
        # A run without config.yaml cannot be matched with another: it stands alone.
        by_config.setdefault(key or (("path", str(run.path)),), []).append(run)
    configs = [dict(key) for key in by_config]
    varying = sorted({k for c in configs for k in c if len({d.get(k) for d in configs}) > 1})
    groups: dict[str, list[Run]] = {}
    for members in by_config.values():
        name = label(members[0], varying)
        groups[f"{name} ({members[0].path})" if name in groups else name] = members
    return groups


def label(run: Run, varying: Sequence[str]) -> str:
    """What was run: agent, env and rewards, then whatever else tells groups apart."""
    c = run.config
    if not c:
        return str(run.path)
    parts = [f"{g}={c[f'{g}.name']}" for g in ("agent", "env") if f"{g}.name" in c]
    rewards = sorted({k.split(".")[1] for k in c if k.startswith("reward.")})
    if rewards:
        parts.append(f"reward={'+'.join(rewards)}")
    shown = {"agent.name", "env.name"}
    # A key this run's plugins lack (another agent's option) says nothing about it.
    parts += [f"{k}={_plain(c[k])}" for k in varying if k not in shown and k in c]
    return " ".join(parts) or "run"


def _plain(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def summarize(groups: dict[str, list[Run]]) -> list[Summary]:
    """Mean and sample standard deviation (0 for one seed) per group, policy and metric."""
    rows = []
    for group, runs in groups.items():
        policies = list(dict.fromkeys(p for run in runs for p in run.results))
        for policy in policies:
            metrics = list(dict.fromkeys(m for r in runs for m in r.results.get(policy, {})))
            for metric in metrics:
                values = tuple(
                    float(r.results[policy][metric])
                    for r in runs
                    if isinstance(r.results.get(policy, {}).get(metric), int | float)
                )
                if values:
                    rows.append(Summary(group, policy, metric, *_mean_std(values), values))
    return rows


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def choose_metrics(rows: Sequence[Summary], wanted: Sequence[str] | None) -> list[str]:
    available = list(dict.fromkeys(r.metric for r in rows))
    if wanted:
        missing = [m for m in wanted if m not in available]
        if missing:
            raise MarlrecError(
                f"no run reports metric '{missing[0]}'; available: {', '.join(available)}"
            )
        return list(wanted)
    chosen = [m for m in DEFAULT_METRICS if m in available]
    return chosen or [m for m in available if m.startswith("test/")] or available


def markdown_table(rows: Sequence[Summary], metrics: Sequence[str]) -> str:
    cells = {(r.group, r.policy, r.metric): r for r in rows}
    lines = [
        "| group | policy | seeds | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for group, policy in dict.fromkeys((r.group, r.policy) for r in rows):
        found = [cells.get((group, policy, m)) for m in metrics]
        seeds = max((s.n for s in found if s is not None), default=0)
        shown = [s.cell() if s is not None else "-" for s in found]
        lines.append(f"| {group} | {policy} | {seeds} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def plot_file(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_") + ".png"


def write_outputs(
    out: Path, groups: dict[str, list[Run]], rows: Sequence[Summary], metrics: Sequence[str]
) -> list[Path]:
    """compare.csv (one row per group, policy and metric), compare.json and bar plots."""
    written = [out / "compare.csv", out / "compare.json"]
    atomic_write(written[0], lambda f: f.write(_csv(rows).encode()))
    write_json(
        written[1],
        {
            "groups": {
                name: {
                    "runs": [str(r.path) for r in runs],
                    "seeds": [r.seed for r in runs],
                }
                for name, runs in groups.items()
            },
            "metrics": list(metrics),
            "results": [
                {
                    "group": r.group,
                    "policy": r.policy,
                    "metric": r.metric,
                    "mean": r.mean,
                    "std": r.std,
                    "n": r.n,
                    "values": list(r.values),
                }
                for r in rows
            ],
        },
    )
    for metric in metrics:
        written.append(out / plot_file(metric))
        bar_plot(written[-1], [r for r in rows if r.metric == metric], metric)
    return written


def _csv(rows: Sequence[Summary]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "policy", "metric", "mean", "std", "n"])
    for r in rows:
        writer.writerow([r.group, r.policy, r.metric, repr(r.mean), repr(r.std), r.n])
    return buffer.getvalue()


def bar_plot(path: Path, rows: Sequence[Summary], metric: str) -> None:
    """Grouped bars: one cluster per group, one bar per policy, ±1 std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r.group for r in rows))
    policies = list(dict.fromkeys(r.policy for r in rows))
    width = 0.8 / len(policies)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) * len(policies)), 3.5))
    for i, policy in enumerate(policies):
        found = {r.group: r for r in rows if r.policy == policy}
        xs = [g + (i - (len(policies) - 1) / 2) * width for g in range(len(groups))]
        means = [found[g].mean if g in found else math.nan for g in groups]
        stds = [found[g].std if g in found else 0.0 for g in groups]
        axes.bar(xs, means, width, yerr=stds, capsize=3, label=policy)
    axes.set_xticks(range(len(groups)), groups, rotation=15, ha="right", fontsize=8)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} (mean ± std over seeds)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def compare(
    dirs: Sequence[Path], out: Path, metrics: Sequence[str] | None = None, force: bool = False
) -> str:
    """Compare runs; write the outputs into `out`; return the markdown table."""
    runs = find_runs(dirs)
    groups = group_runs(runs)
    rows = summarize(groups)
    if not rows:
        raise MarlrecError("the runs report no numeric metrics to compare")
    chosen = choose_metrics(rows, metrics)
    planned = [out / name for name in OUTPUTS] + [out / plot_file(m) for m in chosen]
    existing = [p for p in planned if p.exists()]
    if existing and not force:
        raise MarlrecError(f"{existing[0]} already exists; pass --force to overwrite")
    write_outputs(out, groups, rows, chosen)
    return markdown_table(rows, chosen)
