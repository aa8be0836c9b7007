"""Baselines on ML-100K beside RecBole 1.2.1's figures for the same protocol.

Every rating is an implicit interaction, the split is chronological leave-one-out, and the test
item is ranked against every item outside the user's train + valid history (full ranking).
`content_knn` reads all-MiniLM-L6-v2 embeddings of the item text (encoded once, then cached).

RecBole's Pop counts an item once per training batch it appears in, positives and sampled
negatives alike, and breaks the many ties this leaves by its internal item ids (the order in
which items first appear in its atomic `.inter` file, i.e. in `u.data`). Our `pop` counts
interactions; `--recbole-pop-seeds N` also runs `pop` with `counting: recbole_batches` over N
seeds with RecBole's tie order, to show how close an emulation gets.

    python benchmarks/ml100k_baselines.py --data ../shared/data/ml-100k [--models pop,ease]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from marlrec.baselines import Baseline
from marlrec.baselines.bpr import BPRBaseline
from marlrec.baselines.content_knn import ContentKNNBaseline
from marlrec.baselines.ease import EASEBaseline
from marlrec.baselines.itemknn import ItemKNNBaseline
from marlrec.baselines.sasrec import SASRecBaseline
from marlrec.baselines.simple import PopularityBaseline, RandomBaseline, recbole_batch_counts
from marlrec.data import RecData
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.encoders.hf import HFEncoder
from marlrec.evaluation.harness import EvalConfig, ScoreRanker, baseline_ranker, ranking_eval
from marlrec.io import write_json
from marlrec.plugin import NoConfig

# HR@10, NDCG@10 reported for RecBole 1.2.1 under this protocol (None: not reported).
RECBOLE: dict[str, tuple[float, float] | None] = {
    "random": None,
    "pop": (0.0721, 0.0403),
    "itemknn": (0.1145, 0.0629),
    "ease": (0.1347, 0.0706),
    "bpr": (0.1241, 0.0673),
    "sasrec": None,
    "content_knn": None,
}
MODELS: dict[str, type[Baseline]] = {
    "random": RandomBaseline,
    "pop": PopularityBaseline,
    "itemknn": ItemKNNBaseline,
    "ease": EASEBaseline,
    "bpr": BPRBaseline,
    "sasrec": SASRecBaseline,
    "content_knn": ContentKNNBaseline,
}
RANKING = EvalConfig(metrics=["hr", "ndcg", "mrr", "coverage", "ild", "novelty"], ks=[10])


def build(cls: type[Baseline], data: RecData, item_emb: torch.Tensor, seed: int) -> Baseline:
    config = NoConfig() if cls.Config is NoConfig else cls.Config()
    return cls(config, data=data, item_emb=item_emb, seed=seed)


def run(
    data: RecData, names: list[str], item_emb: torch.Tensor, seed: int
) -> dict[str, dict[str, float]]:
    results = {}
    for name in names:
        started = time.perf_counter()
        model = build(MODELS[name], data, item_emb, seed)
        figures = ranking_eval(data, baseline_ranker(model), "test", RANKING, item_emb=item_emb)
        results[name] = {**figures, "seconds": time.perf_counter() - started}
    return results


def recbole_item_order(data: RecData, folder: Path) -> np.ndarray:
    """Per item, its rank in RecBole's internal ids: order of first appearance in u.data."""
    log = np.loadtxt(folder / "u.data", dtype=np.int64, usecols=(1,))
    raw_ids, first_row = np.unique(log, return_index=True)
    first = dict(zip(raw_ids.tolist(), first_row.tolist(), strict=True))
    appearance = np.array([first[int(r)] for r in data.item_attributes["raw_id"]])
    return np.argsort(np.argsort(appearance))


def recbole_pop(data: RecData, folder: Path, seeds: int) -> dict[str, float]:
    """RecBole's Pop emulated over seeds: batch counts, ties by RecBole's internal ids."""
    order = torch.as_tensor(recbole_item_order(data, folder), dtype=torch.float64)
    cfg = EvalConfig(metrics=["hr", "ndcg"], ks=[10])
    hr, ndcg = [], []
    for seed in range(seeds):
        counts = torch.as_tensor(recbole_batch_counts(data, seed), dtype=torch.float64)
        # Exact in float64: a count decides, then the earlier internal id wins.
        keys = counts * data.n_items + (data.n_items - 1 - order)
        ranker = ScoreRanker(lambda users, histories, keys=keys: keys.expand(len(users), -1))
        figures = ranking_eval(data, ranker, "test", cfg)
        hr.append(figures["HR@10"])
        ndcg.append(figures["NDCG@10"])
    return {
        "seeds": seeds,
        "HR@10": statistics.mean(hr),
        "HR@10_std": statistics.stdev(hr) if seeds > 1 else 0.0,
        "NDCG@10": statistics.mean(ndcg),
        "NDCG@10_std": statistics.stdev(ndcg) if seeds > 1 else 0.0,
    }


def table(results: dict[str, dict[str, float]], emulated: dict[str, float] | None) -> str:
    lines = [
        "| model | HR@10 | RecBole HR@10 | NDCG@10 | RecBole NDCG@10 | Coverage@10 | fit+eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        ref = RECBOLE[name]
        ref_hr, ref_ndcg = (f"{v:.4f}" for v in ref) if ref else ("-", "-")
        lines.append(
            f"| {name} | {row['HR@10']:.4f} | {ref_hr} | {row['NDCG@10']:.4f} | {ref_ndcg} "
            f"| {row['Coverage@10']:.4f} | {row['seconds']:.1f} |"
        )
    if emulated:
        pop_hr, pop_ndcg = RECBOLE["pop"] or (0.0, 0.0)
        lines.append(
            f"| pop, recbole_batches ({emulated['seeds']} seeds) "
            f"| {emulated['HR@10']:.4f} ± {emulated['HR@10_std']:.4f} | {pop_hr:.4f} "
            f"| {emulated['NDCG@10']:.4f} ± {emulated['NDCG@10_std']:.4f} | {pop_ndcg:.4f} "
            "| - | - |"
        )
    return "\n".join(lines)


def item_embeddings(data: RecData, cache: Path, device: torch.device) -> torch.Tensor:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder = HFEncoder(HFEncoder.Config(), cache_dir=cache, device=device)
    return encoder.encode(data.item_text).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/ml100k_baselines.json")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recbole-pop-seeds", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("MARLREC_CACHE", "~/.cache/marlrec")).expanduser(),
    )
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]}; models: {', '.join(MODELS)}")
    dataset = MovieLensDataset(MovieLensDataset.Config(path=str(args.data)))
    data = dataset.load(seed=args.seed, cache_dir=args.cache)
    item_emb = item_embeddings(data, args.cache, torch.device(args.device))
    results = run(data, names, item_emb, args.seed)
    emulated = (
        recbole_pop(data, args.data, args.recbole_pop_seeds) if args.recbole_pop_seeds else None
    )
    print(table(results, emulated))
    configs = {
        n: {f.name: getattr(MODELS[n].Config(), f.name) for f in fields(MODELS[n].Config)}
        for n in names
    }
    write_json(
        args.out,
        {
            "seed": args.seed,
            "device": args.device,
            "recbole": RECBOLE,
            "configs": configs,
            "results": results,
            "pop_recbole_batches": emulated,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
