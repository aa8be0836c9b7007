"""The `response_model` simulator on ML-100K: held-out click AUC, calibration, session lengths.

Fits the click model from scratch (into a temporary cache) with MiniLM item embeddings, reports
its held-out AUC beside a popularity-only reference, then simulates uncapped sessions for three
slate policies (the user's nearest unseen items, the most popular unseen items, random items).

    python benchmarks/response_model.py --data ../shared/data/ml-100k
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from marlrec import registry
from marlrec.data import RecData
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.io import write_json
from marlrec.simulators.click_model import ClickModel, click_auc, item_features
from marlrec.simulators.response_model import ResponseModelConfig, ResponseModelSimulator

Policy = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def embed(data: RecData, cache_dir: Path) -> torch.Tensor:
    encoder = registry.create(
        "encoder", {"name": "hf"}, cache_dir=cache_dir, device=torch.device("cpu")
    )
    return encoder.encode(data.item_text)


def fit_figures(data: RecData, emb: torch.Tensor, config: ResponseModelConfig) -> dict:
    with tempfile.TemporaryDirectory() as fresh:
        config.cache_dir = fresh
        started, cpu_started = time.perf_counter(), time.process_time()
        simulator = ResponseModelSimulator(config, data=data, item_emb=emb)
        fit_s, fit_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        started = time.perf_counter()
        ResponseModelSimulator(config, data=data, item_emb=emb)
        load_s = time.perf_counter() - started
    figures: dict = {
        "fit_seconds": fit_s,
        "fit_cpu_seconds": fit_cpu_s,
        "cached_load_seconds": load_s,
    }
    for target in ("valid", "test"):
        auc = simulator.heldout_auc(target=target)
        figures[f"{target}_auc"] = auc.auc
        figures[f"{target}_user_auc"] = auc.user_auc
    popularity = ClickModel(np.zeros_like(simulator.emb), item_features(data)[:, 0].copy())
    figures["test_auc_popularity_only"] = click_auc(popularity, data, simulator.emb).auc
    figures.update(calibration(simulator, data, config.calibration_negatives))
    return figures | {"simulator": simulator}


def calibration(simulator: ResponseModelSimulator, data: RecData, negatives: int) -> dict:
    """Mean predicted click probability on the validation mix the model is calibrated for."""
    rng = np.random.default_rng(1)
    users = np.flatnonzero(data.split.valid_item >= 0)
    predicted = []
    for user in users:
        history = data.train_histories[user]
        unseen = np.setdiff1d(np.arange(data.n_items), history)
        items = np.append(data.split.valid_item[user], rng.choice(unseen, negatives))
        predicted.append(simulator.model.probability(simulator.emb[history].mean(axis=0), items))
    return {
        "calibration_mean_predicted": float(np.mean(predicted)),
        "calibration_positive_share": 1.0 / (1 + negatives),
    }


def session_lengths(
    simulator: ResponseModelSimulator, data: RecData, policy: Policy, args: argparse.Namespace
) -> dict[str, float]:
    rng = np.random.default_rng(args.seed)
    users = rng.choice(np.flatnonzero([len(h) > 0 for h in data.train_histories]), args.sessions)
    lengths, clicks = [], []
    for user in users:
        simulator.start_session(int(user))
        history = list(data.train_histories[user])
        slates, leave = 0, False
        while not leave and slates < args.max_slates:
            slate = policy(simulator.emb, np.asarray(history), rng)[: args.slate_size]
            response = simulator.respond(int(user), slate, rng)
            history.extend(slate[response.clicks].tolist())
            clicks.append(int(response.clicks.sum()))
            slates, leave = slates + 1, response.leave
        lengths.append(slates)
    return {
        "mean_session_slates": float(np.mean(lengths)),
        "median_session_slates": float(np.median(lengths)),
        "clicks_per_slate": float(np.mean(clicks)),
        "capped_share": float(np.mean(np.asarray(lengths) == args.max_slates)),
    }


def policies(data: RecData, slate_size: int) -> dict[str, Policy]:
    popularity = data.item_popularity.astype(np.float64)

    def unseen_top(scores: np.ndarray, history: np.ndarray) -> np.ndarray:
        scores = scores.copy()
        scores[history] = -np.inf
        return np.argsort(-scores, kind="stable")[:slate_size]

    def nearest(emb: np.ndarray, history: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return unseen_top(emb @ emb[history].mean(axis=0), history)

    def popular(emb: np.ndarray, history: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return unseen_top(popularity, history)

    def random(emb: np.ndarray, history: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return unseen_top(rng.random(data.n_items), history)

    return {"nearest": nearest, "popular": popular, "random": random}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/response_model.json"))
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("MARLREC_CACHE", "~/.cache/marlrec")).expanduser(),
        help="embedding cache (the click model is always fitted afresh)",
    )
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--slate-size", type=int, default=4)
    parser.add_argument("--max-slates", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = MovieLensDataset(MovieLensDataset.Config(path=str(args.data))).load(
        seed=0, cache_dir=args.cache_dir
    )
    figures = fit_figures(data, embed(data, args.cache_dir), ResponseModelConfig())
    simulator = figures.pop("simulator")
    sessions = {
        name: session_lengths(simulator, data, policy, args)
        for name, policy in policies(data, args.slate_size).items()
    }
    for key, value in figures.items():
        print(f"{key}: {value:.4f}")
    print("| slate policy | mean slates | median | clicks/slate | capped |")
    print("|---|---|---|---|---|")
    for name, row in sessions.items():
        print(
            f"| {name} | {row['mean_session_slates']:.2f} | {row['median_session_slates']:.0f} "
            f"| {row['clicks_per_slate']:.3f} | {row['capped_share']:.3f} |"
        )
    write_json(args.out, {"click_model": figures, "sessions": sessions, "args": _plain(args)})
    print(f"wrote {args.out}")


def _plain(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


if __name__ == "__main__":
    main()
