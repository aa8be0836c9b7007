"""Full-ranking evaluation speed at the size of ML-1M: 6,040 users x 3,706 items.

Synthetic data of that shape (about a million interactions, long-tailed item popularity,
chronological leave-one-out), a precomputed score matrix standing in for a model, and every
ranking metric at K = 5, 10, 20, users ranked in chunks. Timed: history masking, top-K, target
masks and all metrics, i.e. everything `ranking_eval` does besides the model's own scoring.

    python benchmarks/eval.py [--repeats 5] [--chunk-users 1024] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from marlrec.data import Interactions, RecData, leave_one_out
from marlrec.evaluation.harness import EvalConfig, ScoreRanker, ranking_eval
from marlrec.evaluation.metrics import CatalogMetric, UserMetric, select
from marlrec.io import write_json

N_USERS, N_ITEMS, EMB_DIM = 6040, 3706, 64
KS = [5, 10, 20]


def synthetic_log(seed: int) -> RecData:
    """ML-1M-shaped interactions: 20 to 310 per user, items drawn with a Zipf-like tail."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(20, 311, N_USERS)
    users = np.repeat(np.arange(N_USERS), counts)
    weights = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.8
    items = rng.choice(N_ITEMS, size=len(users), p=weights / weights.sum())
    log = Interactions(
        user=users.astype(np.int64),
        item=items.astype(np.int64),
        time=np.arange(len(users), dtype=np.float64),
        value=np.ones(len(users), dtype=np.float32),
    )
    return RecData(
        name="ml1m-shaped",
        n_users=N_USERS,
        n_items=N_ITEMS,
        interactions=log,
        item_text=[""] * N_ITEMS,
        split=leave_one_out(log, N_USERS),
    )


def ranking_names() -> list[str]:
    """Every registered ranking metric (session metrics need a simulator, not timed here)."""
    chosen = select(EvalConfig().metrics)
    return [m.name for m in chosen if isinstance(m, UserMetric | CatalogMetric)]


def time_eval(data: RecData, cfg: EvalConfig, device: torch.device, repeats: int) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(N_USERS, N_ITEMS, generator=generator).to(device)
    item_emb = torch.randn(N_ITEMS, EMB_DIM, generator=generator).to(device)
    ranker = ScoreRanker(lambda users, histories: scores[torch.as_tensor(users, device=device)])
    ranking_eval(data, ranker, "test", cfg, item_emb=item_emb)  # warm-up: caches, allocator
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        results = ranking_eval(data, ranker, "test", cfg, item_emb=item_emb)
        seconds.append(time.perf_counter() - started)
    assert all(np.isfinite(v) for v in results.values())
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-users", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    data = synthetic_log(seed=0)
    names = ranking_names()
    cfg = EvalConfig(metrics=names, ks=KS, chunk_users=args.chunk_users)
    seconds = time_eval(data, cfg, device, args.repeats)
    row = {
        "users": N_USERS,
        "items": N_ITEMS,
        "interactions": len(data.interactions),
        "metrics": names,
        "ks": KS,
        "chunk_users": args.chunk_users,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "runs_s": seconds,
    }
    print("| users | items | metrics x K | chunk | device | threads | median s | min s |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {N_USERS} | {N_ITEMS} | {len(names)} x {KS} | {args.chunk_users} | {device} "
        f"| {row['torch_threads']} | {row['median_s']:.3f} | {row['min_s']:.3f} |"
    )
    write_json(args.out, row)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
