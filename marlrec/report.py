"""What a run reports: the learning curve as a PNG, and rich tables of epochs and results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from marlrec.data import Histories
from marlrec.io import atomic_path
from marlrec.pipeline import Pipeline
from marlrec.training.loop import VALID_METRIC, VALID_RETURN, epoch_name


def write_learning_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Test return (and validation return, where it was played) and validation NDCG@10
    against env steps and, in a second panel, each role's losses at the end of each epoch, as a
    PNG (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    losses = sorted({k for r in history for k in r if k.startswith("loss/")})
    figure = Figure(figsize=(7, 7 if losses else 4))
    FigureCanvasAgg(figure)
    ret_axis = figure.add_subplot(2 if losses else 1, 1, 1)
    tested = [r for r in history if "test_return" in r]
    steps = [r["env_step"] for r in tested]
    ret_axis.plot(steps, [r["test_return"] for r in tested], "C0-o", label="test return")
    ret_axis.set_ylabel("test return", color="C0")
    # Validation sessions (`trainer.select=return`) on the same axis as the test step's.
    returned = [r for r in history if VALID_RETURN in r]
    if returned:
        steps = [r["env_step"] for r in returned]
        ret_axis.plot(steps, [r[VALID_RETURN] for r in returned], "C2-^", label=VALID_RETURN)
        ret_axis.set_ylabel("return")
        ret_axis.legend(fontsize="small", loc="lower right")
    ret_axis.set_xlabel("env steps")
    validated = [r for r in history if VALID_METRIC in r]
    ndcg_axis = ret_axis.twinx()
    ndcg_axis.plot([r["env_step"] for r in validated], [r[VALID_METRIC] for r in validated], "C1-s")
    ndcg_axis.set_ylabel(VALID_METRIC, color="C1")
    if losses:
        loss_axis = figure.add_subplot(2, 1, 2, sharex=ret_axis)
        for key in losses:
            points = [(r["env_step"], r[key]) for r in history if key in r]
            loss_axis.plot(*zip(*points, strict=True), "-o", label=key.removeprefix("loss/"))
        loss_axis.set_xlabel("env steps")
        loss_axis.set_ylabel("loss (last update of the epoch)")
        loss_axis.legend(fontsize="small")
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


def write_interest_map(pipeline: Pipeline, path: Path, seed: int, most: int = 600) -> bool:
    """Users' states and items projected together to 2-D by t-SNE, each user coloured by the
    category most frequent in their training history (the dataset's first categorical item
    attribute), as a PNG; False (nothing written) when the data has no such attribute."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    data, item_emb = pipeline.data, pipeline.item_emb.detach().cpu().float()
    category = item_categories(data.item_attributes)
    if category is None:
        return False
    name, categories = category
    rng = np.random.default_rng(seed)
    histories = data.train_histories
    users = np.flatnonzero([len(h) > 0 for h in histories])
    users = rng.choice(users, min(most, len(users)), replace=False)
    with torch.no_grad():
        packed = Histories.pack([histories[u] for u in users], item_emb.device)
        states = pipeline.env.ctx.state.from_histories(packed, item_emb).cpu().float()
    dominant = [int(categories[histories[u]].sum(axis=0).argmax()) for u in users]
    items = rng.choice(data.n_items, min(most, data.n_items), replace=False)
    shown_items = states.shape[1] == item_emb.shape[1]  # the same space: draw them together
    together = torch.cat([states, item_emb[items]]) if shown_items else states
    points = torch.nn.functional.normalize(together, dim=1).numpy()
    perplexity = min(30.0, (len(points) - 1) / 3)
    # 500 iterations (sklearn's default is 1,000) settle a map of ~1k points at half the cost.
    tsne = TSNE(init="pca", perplexity=perplexity, max_iter=500, random_state=seed)
    xy = tsne.fit_transform(points)
    figure = Figure(figsize=(7, 6))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    if shown_items:
        axis.scatter(xy[len(users) :, 0], xy[len(users) :, 1], s=4, c="lightgrey", label="items")
    for value in sorted(set(dominant)):
        mine = np.flatnonzero(np.array(dominant) == value)
        axis.scatter(xy[mine, 0], xy[mine, 1], s=10, label=f"{name} {value}")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.suptitle(f"interest map: {len(users)} users' states (t-SNE), by dominant {name}")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return True


def item_categories(attributes: dict[str, np.ndarray]) -> tuple[str, np.ndarray] | None:
    """The first categorical item attribute, as a (n_items, categories) multi-hot matrix: one
    already (`genres`), or one-hot from a small-integer code (`topic`)."""
    for name, values in attributes.items():
        if values.ndim == 2 and values.shape[1] > 1:
            return name, np.asarray(values, dtype=np.float64)
        distinct = len(np.unique(values)) if values.ndim == 1 else 0
        # Ids and years are integers too, but with (nearly) one value per item or many values.
        if values.dtype.kind in "iu" and 1 < distinct <= min(30, len(values) // 2):
            codes = values - values.min()
            return name, np.eye(int(codes.max()) + 1)[codes]
    return None


def print_history(history: list[dict[str, Any]], best_epoch: int | None) -> None:
    """One row per epoch (epoch 0: the validation after imitation); the epoch the best
    checkpoint holds is starred, and validation returns get a column where they were played."""
    returns = any(VALID_RETURN in r for r in history)
    table = Table(title="training")
    columns = ["epoch", "env steps", "test return", VALID_METRIC] + [VALID_RETURN] * returns
    for column in columns:
        table.add_column(column, justify="right")
    for r in history:
        ndcg = r.get(VALID_METRIC)
        mark = " *" if ndcg is not None and r["epoch"] == best_epoch else ""
        row = [
            epoch_name(r["epoch"]),
            str(r["env_step"]),
            f"{r['test_return']:.4f}" if "test_return" in r else "",
            f"{ndcg:.4f}{mark}" if ndcg is not None else "",
        ]
        if returns:
            row.append(f"{r[VALID_RETURN]:.3f}" if VALID_RETURN in r else "")
        table.add_row(*row)
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
