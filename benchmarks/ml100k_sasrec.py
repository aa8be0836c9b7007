"""SASRec on ML-100K: both losses' validation and test figures, and the recall of retrieved pools.

Chronological leave-one-out, full ranking. `sasrec` (full-softmax CE) and `sasrec_bce` (binary
CE, one negative) are early-stopped on validation NDCG@10; the test split is read once, after.
The pools' recall is the share of held-out next items among the top `--pool` candidates of the
`ease`, `sasrec` and `union` (ease + sasrec) retrievers, consumed items excluded. The `sasrec`
retriever shares the `sasrec` baseline's fit (same settings and seed), through the disk cache
when the two run in different processes.

    python benchmarks/ml100k_sasrec.py --data ../shared/data/ml-100k --seeds 0,1,2 \
        [--models sasrec,sasrec_bce] [--retrievers ease,sasrec,union] [--pool 100]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch

from marlrec import fitted
from marlrec.baselines import Baseline
from marlrec.baselines.sasrec import SASRecBaseline, SASRecBCEBaseline
from marlrec.data import Histories, RecData
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.evaluation.harness import EvalConfig, baseline_ranker, ranking_eval
from marlrec.io import write_json
from marlrec.retrieval import Retriever
from marlrec.retrieval.ease import EASERetriever
from marlrec.retrieval.recall import pool_recalls
from marlrec.retrieval.sequential import SASRecRetriever
from marlrec.retrieval.union import union_scores

MODELS: dict[str, type[SASRecBaseline]] = {
    "sasrec": SASRecBaseline,
    "sasrec_bce": SASRecBCEBaseline,
}
RANKING = EvalConfig(metrics=["hr", "ndcg"], ks=[10])


def baseline_figures(
    cls: type[Baseline], data: RecData, seed: int, device: torch.device
) -> dict[str, object]:
    started = time.perf_counter()
    model = cls(
        cls.Config(), data=data, item_emb=torch.zeros(data.n_items, 1, device=device), seed=seed
    )
    row: dict[str, object] = {"fit_seconds": time.perf_counter() - started}
    for split in ("valid", "test"):
        figures = ranking_eval(data, baseline_ranker(model), split, RANKING)
        row.update({f"{split}/{k}": v for k, v in figures.items()})
    history = getattr(model, "history", [])
    checks = [r for r in history if "valid_ndcg@10" in r]
    row["epochs"] = len(history)
    row["best_epoch"] = max(checks, key=lambda r: r["valid_ndcg@10"])["epoch"] if checks else None
    return row


class Union(Retriever):
    """`union` over members built here (the plugin builds its members by entry point)."""

    def __init__(self, members: list[Retriever], size: int) -> None:
        super().__init__(None, data=members[0].data, item_emb=members[0].item_emb)
        self.members, self.size = members, size

    def scores(self, states: torch.Tensor, histories: Histories) -> torch.Tensor:
        return union_scores(
            [m.scores(states, histories) for m in self.members], histories, self.size
        )


def retriever_recalls(
    names: list[str], data: RecData, seed: int, pool: int, device: torch.device
) -> dict[str, dict[str, float]]:
    item_emb = torch.zeros(data.n_items, 1, device=device)
    built: dict[str, Retriever] = {}
    results = {}
    for name in names:
        started = time.perf_counter()
        if name == "ease":
            built[name] = EASERetriever(EASERetriever.Config(), data=data, item_emb=item_emb)
        elif name == "sasrec":
            config = SASRecRetriever.Config(seed=seed)
            built[name] = SASRecRetriever(config, data=data, item_emb=item_emb)
        else:
            ease = built.get("ease") or EASERetriever(
                EASERetriever.Config(), data=data, item_emb=item_emb
            )
            sasrec = built.get("sasrec") or SASRecRetriever(
                SASRecRetriever.Config(seed=seed), data=data, item_emb=item_emb
            )
            built[name] = Union([ease, sasrec], pool)
        no_states = lambda h: torch.zeros(len(h), 1, device=device)  # noqa: E731
        row = pool_recalls(built[name], data, no_states, pool)
        results[name] = {**row, "seconds": time.perf_counter() - started}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--models", default="sasrec,sasrec_bce")
    parser.add_argument("--retrievers", default="ease,sasrec,union")
    parser.add_argument("--pool", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("MARLREC_CACHE", "~/.cache/marlrec")).expanduser(),
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ml100k_sasrec.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    fitted.use_cache_dir(args.cache)
    device = torch.device(args.device)
    results: dict[str, object] = {"threads": torch.get_num_threads(), "device": str(device)}
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        dataset = MovieLensDataset(MovieLensDataset.Config(path=str(args.data)))
        data = dataset.load(seed=seed, cache_dir=args.cache)
        models = {
            name: baseline_figures(MODELS[name], data, seed, device)
            for name in args.models.split(",")
            if name
        }
        names = [n for n in args.retrievers.split(",") if n]
        recalls = retriever_recalls(names, data, seed, args.pool, device)
        results[f"seed{seed}"] = {"baselines": models, "retrievers": recalls}
        print(seed, models, recalls, flush=True)
        write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
