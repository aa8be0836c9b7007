"""Classical baselines on ML-100K beside RecBole 1.2.1's figures for the same protocol.

Every rating is an implicit interaction, the split is chronological leave-one-out, and the test
item is ranked against every item outside the user's train + valid history.

    python benchmarks/ml100k_baselines.py --data ../shared/data/ml-100k
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from marlrec.baselines import Baseline
from marlrec.baselines.bpr import BPRBaseline
from marlrec.baselines.ease import EASEBaseline
from marlrec.baselines.itemknn import ItemKNNBaseline
from marlrec.baselines.simple import PopularityBaseline, RandomBaseline
from marlrec.data import RecData
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.evaluation.harness import EvalConfig, baseline_ranker, ranking_eval
from marlrec.io import write_json
from marlrec.plugin import NoConfig

# HR@10, NDCG@10 reported for RecBole 1.2.1 under this protocol (None: not reported).
RECBOLE: dict[str, tuple[float, float] | None] = {
    "random": None,
    "pop": (0.0721, 0.0403),
    "itemknn": (0.1145, 0.0629),
    "ease": (0.1347, 0.0706),
    "bpr": (0.1241, 0.0673),
}
MODELS: dict[str, type[Baseline]] = {
    "random": RandomBaseline,
    "pop": PopularityBaseline,
    "itemknn": ItemKNNBaseline,
    "ease": EASEBaseline,
    "bpr": BPRBaseline,
}


def build(cls: type[Baseline], data: RecData, seed: int) -> Baseline:
    config = NoConfig() if cls.Config is NoConfig else cls.Config()
    return cls(config, data=data, item_emb=torch.zeros(data.n_items, 1), seed=seed)


def run(data: RecData, seed: int) -> dict[str, dict[str, float]]:
    results = {}
    for name, cls in MODELS.items():
        started = time.perf_counter()
        figures = ranking_eval(data, baseline_ranker(build(cls, data, seed)), "test", EvalConfig())
        results[name] = {**figures, "seconds": time.perf_counter() - started}
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| model | HR@10 | RecBole HR@10 | NDCG@10 | RecBole NDCG@10 | fit+eval s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        ref = RECBOLE[name]
        ref_hr, ref_ndcg = (f"{v:.4f}" for v in ref) if ref else ("-", "-")
        lines.append(
            f"| {name} | {row['HR@10']:.4f} | {ref_hr} | {row['NDCG@10']:.4f} | {ref_ndcg} "
            f"| {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/ml100k_baselines.json")
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    np.random.seed(args.seed)
    with tempfile.TemporaryDirectory() as cache:
        dataset = MovieLensDataset(MovieLensDataset.Config(path=str(args.data)))
        data = dataset.load(seed=args.seed, cache_dir=Path(cache))
    results = run(data, args.seed)
    print(table(results))
    write_json(args.out, {"seed": args.seed, "recbole": RECBOLE, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
