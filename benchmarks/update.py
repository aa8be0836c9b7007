"""Incremental updates on ML-100K split by time: `marlrec update` against a full retrain.

The interactions are ordered by timestamp (file order among equal ones) and cut by count: the
first 90% train the base run, the next 5% are the update's log, the last 5% are the test.
Three runs of the same configuration (`experiment=ml100k` over EASE's candidates at a reduced
budget, `CONFIG` below, seed 0), each on a MovieLens folder holding only its interactions:

- base: trained on the first 90% (its own leave-one-out split selects its checkpoint);
- retrain: trained from scratch on the first 95%, timed;
- update: `marlrec update` of the base with the 90-95% window as its log (new users, and new
  movies with their catalog text), timed. Its data is then the retrain's, split the same way.

Both select on validation (each user's second-latest interaction of the first 95%, in the update
window for users active there), never on the test window. Test: each user with an interaction in
the last 5% is evaluated on their first one there, from everything they consumed before it, by
full ranking (NDCG@10, HR@10; a movie first rated in the test window is a miss for every model).
Reported: the update's NDCG@10 / the retrain's and the update's wall time / the retrain's, both
runs in this process, one after the other. The last 5% of ML-100K by time are about a hundred
users' (most of them rate many movies at once), so the test figures rest on a few hits; each
model's figures on its own leave-one-out split of the first 95% (the same interactions for the
update and the retrain, every user) are reported beside them.

    python benchmarks/update.py --json update.json --data path/to/ml-100k [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marlrec.app import compose_config
from marlrec.evaluation.harness import ranking_eval
from marlrec.evaluation.rankers import agent_ranker
from marlrec.io import write_json
from marlrec.pipeline import Pipeline, cache_dir, configure
from marlrec.privacy import KEY_ENV, pseudonym
from marlrec.recommend import AddedItems, load_run
from marlrec.run import train
from marlrec.update import update_run
from marlrec.versions import current_dir

CONFIG = [
    "experiment=ml100k",
    "retrieval=ease",
    "baseline=[]",
    "eval.metrics=[hr,ndcg]",
    "trainer.max_epochs=2",
    "trainer.epoch_num_env_steps=2048",
    "trainer.show_progress=false",
    "seed=0",
]
CUTS = (0.90, 0.95)
K = 10
CHUNK = 256
COLUMNS = ["user", "item", "rating", "timestamp"]


def read_ratings(folder: Path) -> pd.DataFrame:
    """u.data in timestamp order, file order among equal times."""
    table = pd.read_csv(folder / "u.data", sep="\t", names=COLUMNS, dtype=str)
    table["time"] = table["timestamp"].astype(np.int64)
    return table.sort_values("time", kind="stable")  # the index keeps the file order


def movielens_folder(source: Path, rows: pd.DataFrame, folder: Path) -> Path:
    """A MovieLens-100K folder whose u.data holds `rows` (in file order) and the same movies."""
    folder.mkdir(parents=True, exist_ok=True)
    rows.sort_index()[COLUMNS].to_csv(folder / "u.data", sep="\t", header=False, index=False)
    for name in ("u.item", "u.genre"):
        shutil.copyfile(source / name, folder / name)
    return folder


def movie_texts(folder: Path) -> dict[str, str]:
    """Each movie's raw id and its catalog text, as the `movielens` dataset renders it."""
    cfg = compose_config([*CONFIG, f"data.path={folder}"])
    data = configure(cfg).one("data").create().load(seed=0, cache_dir=cache_dir(cfg))
    raw = data.item_attributes["raw_id"].tolist()
    return {str(r): text for r, text in zip(raw, data.item_text, strict=True)}


def catalog_numbers(p: Pipeline, run_dir: Path) -> dict[str, int]:
    """Raw movie id -> item number in a loaded run (catalog movies, then added ones)."""
    added = AddedItems.load(current_dir(run_dir))
    base = p.data.n_items - len(added.ids)
    numbers = {str(r): i for i, r in enumerate(p.data.item_attributes["raw_id"][:base].tolist())}
    return numbers | {item: base + i for i, item in enumerate(added.ids)}


def same_split(p: Pipeline) -> dict[str, float]:
    """NDCG@10 and HR@10 on the run's own leave-one-out split of the first 95%, which the
    update's data and the retrain's share: validation (which both select on) and each user's
    latest interaction of the first 95% (selected on by neither)."""
    cfg = dataclasses.replace(p.eval, metrics=["ndcg", "hr"], ks=[K], protocol="full")
    ranker = agent_ranker(p.env, p.agent)
    return {
        f"{split}/{key}": value
        for split in ("valid", "test")
        for key, value in ranking_eval(p.data, ranker, split, cfg, item_emb=p.item_emb).items()
    }


def test_ndcg(run_dir: Path, before: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    """NDCG@10 and HR@10 on each test user's first test interaction, full ranking, and the
    figures on the run's own split."""
    p = load_run(run_dir)
    numbers = catalog_numbers(p, run_dir)
    first = test.groupby("user", sort=False).head(1)
    by_user = {u: rows["item"].tolist() for u, rows in before.groupby("user", sort=False)}
    histories = [
        np.array([numbers[i] for i in by_user.get(u, [])], np.int64) for u in first["user"]
    ]
    targets = np.array([numbers.get(i, -1) for i in first["item"]])
    ranker = agent_ranker(p.env, p.agent)
    gains, hits = [], []
    for start in range(0, len(histories), CHUNK):
        chunk = histories[start : start + CHUNK]
        users = np.zeros(len(chunk), np.int64)  # the agents rank from the history alone
        top = ranker(users, chunk, K).cpu().numpy()
        for row, target in zip(top, targets[start : start + CHUNK], strict=True):
            at = np.flatnonzero(row == target)
            hits.append(float(len(at) > 0))
            gains.append(1 / np.log2(at[0] + 2) if len(at) else 0.0)
    key = p.key
    known = [u for u in first["user"] if key and pseudonym(key, u) in p.data.user_index_of_id]
    return {
        "test/NDCG@10": float(np.mean(gains)),
        "test/HR@10": float(np.mean(hits)),
        "hits": int(sum(hits)),
        "users": len(gains),
        "users_known_to_model": len(known),
        "targets_in_catalog": int((targets >= 0).sum()),
        "own_split": same_split(p),
    }


def timed_train(folder: Path, run_dir: Path) -> float:
    started = time.perf_counter()
    train(compose_config([*CONFIG, f"data.path={folder}"]), run_dir)
    return time.perf_counter() - started


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "cpus": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="results file")
    parser.add_argument("--data", type=Path, required=True, help="the ml-100k folder")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temp folder)")
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "update-benchmark")  # pseudonyms, as the preset asks
    out = args.out or Path(tempfile.mkdtemp(prefix="marlrec-update-"))
    ratings = read_ratings(args.data.resolve())
    n90, n95 = (round(len(ratings) * cut) for cut in CUTS)
    first90, window, test = ratings[:n90], ratings[n90:n95], ratings[n95:]
    base_data = movielens_folder(args.data, first90, out / "data-90")
    retrain_data = movielens_folder(args.data, ratings[:n95], out / "data-95")
    log = out / "log.csv"
    window[COLUMNS].to_csv(log, index=False)
    texts = movie_texts(retrain_data)
    new_movies = sorted(set(window["item"]) - set(first90["item"]), key=int)
    items = out / "new_movies.csv"
    pd.DataFrame({"id": new_movies, "title": [texts[m] for m in new_movies]}).to_csv(
        items, index=False
    )
    base_seconds = timed_train(base_data, out / "base")
    retrain_seconds = timed_train(retrain_data, out / "retrain")
    updated = out / "updated"
    shutil.copytree(out / "base", updated)
    started = time.perf_counter()
    report = update_run(updated, log, items)
    update_seconds = time.perf_counter() - started
    report.pop("log")
    before = ratings[:n95]
    figures = {
        "base (first 90%, no update)": test_ndcg(out / "base", before, test),
        "retrain (first 95%)": test_ndcg(out / "retrain", before, test),
        "update (base + next 5%)": test_ndcg(updated, before, test),
    }
    ndcg = {name: row["test/NDCG@10"] for name, row in figures.items()}
    own = {name: row["own_split"]["valid/NDCG@10"] for name, row in figures.items()}
    result = {
        "config": CONFIG,
        "interactions": {"train_90": n90, "update_5": n95 - n90, "test_5": len(ratings) - n95},
        "new_movies_in_update": len(new_movies),
        "figures": figures,
        "seconds": {"base": base_seconds, "retrain": retrain_seconds, "update": update_seconds},
        "update": report,
        "ndcg_ratio_update_over_retrain": ndcg["update (base + next 5%)"]
        / ndcg["retrain (first 95%)"],
        "time_ratio_update_over_retrain": update_seconds / retrain_seconds,
        # The same interactions split the same way, 900+ users: a steadier reading.
        "valid_ndcg_ratio_update_over_retrain": own["update (base + next 5%)"]
        / own["retrain (first 95%)"],
        "machine": machine(),
    }
    write_json(args.json, result)
    print(
        f"NDCG@10 update/retrain {result['ndcg_ratio_update_over_retrain']:.3f} "
        f"(target >= 0.98), time update/retrain {result['time_ratio_update_over_retrain']:.3f} "
        f"(target <= 0.20); wrote {args.json}"
    )


if __name__ == "__main__":
    main()
