"""Baselines on ML-100K beside RecBole 1.2.1's figures for the same protocol.

Every rating is an implicit interaction, the split is chronological leave-one-out, and the test
item is ranked against every item outside the user's train + valid history (full ranking).
`content_knn` reads all-MiniLM-L6-v2 embeddings of the item text (encoded once, then cached).

Our `pop` ranks by interaction counts; RecBole's Pop counts an item once per training batch it
appears in (negatives included) and leaves the many ties to `torch.topk`.
`--recbole-pop-seeds 2020,0,1,2` adds, per seed, RecBole 1.2.1's Pop reproduced exactly
(`benchmarks/recbole_pop.py`) and evaluated by our harness, beside RecBole's own figures for
that seed: matching them checks our split, histories and metrics (2020 gives the published ones).

    python benchmarks/ml100k_baselines.py --data ../shared/data/ml-100k [--models pop,ease] \
        [--recbole-pop-seeds 2020,0,1,2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from recbole_pop import PUBLISHED_SEED, RecBolePop

from marlrec.baselines import Baseline
from marlrec.baselines.bpr import BPRBaseline
from marlrec.baselines.content_knn import ContentKNNBaseline
from marlrec.baselines.ease import EASEBaseline
from marlrec.baselines.itemknn import ItemKNNBaseline
from marlrec.baselines.sasrec import SASRecBaseline, SASRecBCEBaseline
from marlrec.baselines.simple import PopularityBaseline, RandomBaseline
from marlrec.data import RecData
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.encoders.hf import HFEncoder
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
    "sasrec": None,
    "sasrec_bce": None,
    "content_knn": None,
}
# RecBole 1.2.1's own Pop (its defaults, one seed each): 2020 is the published run, the others
# are runs of RecBole itself at those seeds.
RECBOLE_POP_BY_SEED: dict[int, tuple[float, float]] = {
    PUBLISHED_SEED: (0.0721, 0.0403),
    0: (0.0710, 0.0352),
    1: (0.0742, 0.0342),
    2: (0.0817, 0.0421),
}
MODELS: dict[str, type[Baseline]] = {
    "random": RandomBaseline,
    "pop": PopularityBaseline,
    "itemknn": ItemKNNBaseline,
    "ease": EASEBaseline,
    "bpr": BPRBaseline,
    "sasrec": SASRecBaseline,
    "sasrec_bce": SASRecBCEBaseline,
    "content_knn": ContentKNNBaseline,
}
RANKING = EvalConfig(metrics=["hr", "ndcg", "mrr", "coverage", "ild", "novelty"], ks=[10])


def build(cls: type[Baseline], data: RecData, item_emb: torch.Tensor, seed: int) -> Baseline:
    config = NoConfig() if cls.Config is NoConfig else cls.Config()
    return cls(config, data=data, item_emb=item_emb, seed=seed)


def run(
    data: RecData,
    names: list[str],
    item_emb: torch.Tensor,
    seed: int,
    done: Callable[[dict[str, dict[str, float]]], None] = lambda results: None,
) -> dict[str, dict[str, float]]:
    """Every model's figures; `done` receives them after each model, so none are lost."""
    results = {}
    for name in names:
        started = time.perf_counter()
        model = build(MODELS[name], data, item_emb, seed)
        figures = ranking_eval(data, baseline_ranker(model), "test", RANKING, item_emb=item_emb)
        results[name] = {**figures, "seconds": time.perf_counter() - started}
        done(results)
    return results


def recbole_pop(
    data: RecData, folder: Path, seeds: list[int], item_emb: torch.Tensor
) -> dict[int, dict[str, float]]:
    """Per seed, RecBole 1.2.1's Pop reproduced and ranked through our harness (test split);
    none, with a note, where the folder has no ML-100K `u.data` to reproduce it from."""
    results: dict[int, dict[str, float]] = {}
    if seeds and not (folder / "u.data").is_file():
        print(f"note: RecBole's Pop not reproduced: it reads ML-100K's u.data, absent in {folder}")
        return results
    for seed in seeds:
        started = time.perf_counter()
        ranker = RecBolePop(data, folder, seed).ranker("test")
        figures = ranking_eval(data, ranker, "test", RANKING, item_emb=item_emb)
        results[seed] = {**figures, "seconds": time.perf_counter() - started}
    return results


def table(results: dict[str, dict[str, float]], reproduced: dict[int, dict[str, float]]) -> str:
    """The figures measured in this run (RecBole's published ones are in the JSON and README)."""
    lines = ["| model | HR@10 | NDCG@10 | Coverage@10 | fit+eval s |", "|---|---|---|---|---|"]
    rows = list(results.items())
    rows += [(f"pop, RecBole 1.2.1 reproduced (seed {s})", row) for s, row in reproduced.items()]
    for label, row in rows:
        lines.append(
            f"| {label} | {row['HR@10']:.4f} | {row['NDCG@10']:.4f} "
            f"| {row['Coverage@10']:.4f} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def item_embeddings(data: RecData, cache: Path, device: torch.device) -> torch.Tensor:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder = HFEncoder(HFEncoder.Config(), cache_dir=cache, device=device)
    return encoder.encode(data.item_text).to(device)


def add_device_and_cache(parser: argparse.ArgumentParser) -> None:
    """The `--device` and `--cache` options both ML-100K benchmarks take."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("MARLREC_CACHE", "~/.cache/marlrec")).expanduser(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/ml100k_baselines.json")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--recbole-pop-seeds",
        default=str(PUBLISHED_SEED),
        help="comma-separated seeds of RecBole's Pop reproduced exactly (empty: none)",
    )
    add_device_and_cache(parser)
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    try:
        pop_seeds = [int(s) for s in args.recbole_pop_seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(
            f"--recbole-pop-seeds takes comma-separated integers, got {args.recbole_pop_seeds!r}"
        )
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]}; models: {', '.join(MODELS)}")
    dataset = MovieLensDataset(MovieLensDataset.Config(path=str(args.data)))
    data = dataset.load(seed=args.seed, cache_dir=args.cache)
    item_emb = item_embeddings(data, args.cache, torch.device(args.device))
    configs = {
        n: {f.name: getattr(MODELS[n].Config(), f.name) for f in fields(MODELS[n].Config)}
        for n in names
    }
    written: dict[str, Any] = {
        "seed": args.seed,
        "device": args.device,
        "recbole": RECBOLE,  # published reference figures, not measured here
        "recbole_pop_by_seed": RECBOLE_POP_BY_SEED,
        "configs": configs,
        "results": {},
        "pop_recbole_reproduced": {},
    }

    def save(key: str, figures: dict[Any, dict[str, float]]) -> None:
        # Atomically after every model: a crash later keeps everything measured so far.
        write_json(args.out, {**written, key: figures})
        written[key] = dict(figures)

    results = run(data, names, item_emb, args.seed, lambda r: save("results", r))
    reproduced = recbole_pop(data, args.data, pop_seeds, item_emb)
    save("pop_recbole_reproduced", reproduced)
    print(table(results, reproduced))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
