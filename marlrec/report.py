"""What a run reports: the learning curve as a PNG, and rich tables of epochs and results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from marlrec.io import atomic_path
from marlrec.training.loop import VALID_METRIC


def write_learning_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Test return and validation NDCG@10 against env steps, as a PNG (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    ret_axis = figure.add_subplot()
    tested = [r for r in history if "test_return" in r]
    ret_axis.plot([r["env_step"] for r in tested], [r["test_return"] for r in tested], "C0-o")
    ret_axis.set_xlabel("env steps")
    ret_axis.set_ylabel("test return", color="C0")
    validated = [r for r in history if VALID_METRIC in r]
    ndcg_axis = ret_axis.twinx()
    ndcg_axis.plot([r["env_step"] for r in validated], [r[VALID_METRIC] for r in validated], "C1-s")
    ndcg_axis.set_ylabel(VALID_METRIC, color="C1")
    figure.suptitle("learning curve")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def write_role_shares(results: dict[str, dict[str, float]], path: Path) -> bool:
    """Each role's share of slots and clicks in the simulated sessions, one panel per policy,
    as a PNG; False (nothing written) when the sessions were not run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    prefix, suffix = "sim/role/", "/slot_share"
    roles = [
        k[len(prefix) : -len(suffix)]
        for k in next(iter(results.values()))
        if k.startswith(prefix) and k.endswith(suffix)
    ]
    if not roles:
        return False
    figure = Figure(figsize=(3 + 1.6 * len(results), 3.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(results), sharey=True, squeeze=False)[0]
    for axis, (policy, row) in zip(axes, results.items(), strict=True):
        at = range(len(roles))
        for offset, (share, color) in enumerate((("slot_share", "C0"), ("click_share", "C1"))):
            heights = [row[f"{prefix}{role}/{share}"] for role in roles]
            axis.bar([x + 0.4 * offset for x in at], heights, 0.4, color=color, label=share)
        axis.set_xticks([x + 0.2 for x in at], roles, rotation=30, ha="right")
        axis.set_title(policy, fontsize=9)
    axes[0].set_ylabel("share of the session's slots / clicks")
    axes[0].legend(fontsize=8)
    figure.suptitle("what each role contributes")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return True


def print_history(history: list[dict[str, Any]]) -> None:
    """One row per epoch; the best validation is starred."""
    scores = [r[VALID_METRIC] for r in history if VALID_METRIC in r]
    best = max(scores) if scores else None
    table = Table(title="training")
    for column in ("epoch", "env steps", "test return", VALID_METRIC):
        table.add_column(column, justify="right")
    for r in history:
        ndcg = r.get(VALID_METRIC)
        mark = " *" if ndcg is not None and ndcg == best else ""
        table.add_row(
            str(r["epoch"]),
            str(r["env_step"]),
            f"{r['test_return']:.4f}" if "test_return" in r else "",
            f"{ndcg:.4f}{mark}" if ndcg is not None else "",
        )
    Console(width=160).print(table)


SHORT_NAMES = {
    "sim/mean_return": "return",
    "sim/clicks_per_session": "clicks/session",
    "sim/session_depth": "slates/session",
    "sim/session_diversity": "session ILD",
}


TABLE_METRICS = ("HR", "NDCG", "MRR", "Coverage", "ILD")


def print_table(results: dict[str, dict[str, float]], title: str) -> None:
    """Test-split ranking metrics and simulated-session figures, one row per policy."""
    first = next(iter(results.values()))
    # Headline ranking metrics at the first cut-off; metrics.json keeps every metric and K.
    test = [c for c in first if c.startswith("test/")]
    k = test[0].rsplit("@", 1)[-1] if test else ""
    columns = [c for c in test if c.rsplit("/", 1)[-1] in {f"{m}@{k}" for m in TABLE_METRICS}]
    columns += [c for c in first if c in SHORT_NAMES]
    terms = [c for c in first if c.startswith("sim/reward/")]
    columns += terms if len(terms) > 1 else []
    table = Table(title=title)
    table.add_column("policy")
    for column in columns:
        table.add_column(SHORT_NAMES.get(column, column.split("/", 1)[1]), justify="right")
    for policy, row in results.items():
        table.add_row(policy, *(f"{row[c]:.4f}" for c in columns))
    Console(width=160).print(table)
