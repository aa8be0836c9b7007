"""Incremental updates on ML-100K split by time: `marlrec update` against a full retrain.

The interactions are ordered by timestamp (file order among equal ones) and cut by count: the
first 90% train the base run, the next 5% are the update's log, the last 5% are the test.
Per seed (`--seeds`, default 0,1,2), three runs of the same configuration (`experiment=ml100k`
over EASE's candidates at a reduced budget, `CONFIG` below), each on a MovieLens folder holding
only its interactions:

- base: trained on the first 90% (its own leave-one-out split selects its checkpoint);
- retrain: trained from scratch on the first 95%, timed;
- update: `marlrec update` of the base with the 90-95% window as its log (new users, and new
  movies with their catalog text), timed. Its data is then the retrain's, split the same way.

Both select on validation (each user's second-latest interaction of the first 95%, in the update
window for users active there), never on the test window. The test window is read two ways,
both by full ranking with the history excluded (NDCG@10, HR@10; a movie first rated in the test
window is a miss for every model):

- `first_in_window`, the issue's protocol: each user with an interaction in the last 5% is
  evaluated on their first one there, from everything they consumed before it. The last 5% of
  ML-100K by time are about a hundred users' (most rate many movies at once): a few hits.
- `every_in_window`: every interaction of the last 5% is a target, from everything its user
  consumed before it (earlier test interactions included): about 5,000 targets.

Each model's figures on its own leave-one-out split of the first 95% (the same interactions for
the update and the retrain, every user) are reported beside them. Reported over seeds: mean and
sample standard deviation of each figure, and update / retrain as the ratio of the means and as
the mean of the per-seed ratios; the update's wall time / the retrain's, per seed both timed in
one process, one after the other (`retrain_and_update_timed_in_one_process` says when a rerun
reused an earlier process's run). Every finished run is kept under `--out` with its timing and
reused by a rerun, so an interrupted benchmark continues where it stopped; `--steps`,
`--replay` and `--lr` update the same base runs with other settings (in their own folders).

    python benchmarks/update.py --json update.json --data path/to/ml-100k --out DIR --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from marlrec.update import UpdateOptions, update_run
from marlrec.versions import current_dir

CONFIG = [
    "experiment=ml100k",
    "retrieval=ease",
    "baseline=[]",
    "eval.metrics=[hr,ndcg]",
    "trainer.max_epochs=2",
    "trainer.epoch_num_env_steps=2048",
    "trainer.show_progress=false",
]
CUTS = (0.90, 0.95)
K = 10
CHUNK = 256
COLUMNS = ["user", "item", "rating", "timestamp"]
MODELS = {
    "base": "base (first 90%, no update)",
    "retrain": "retrain (first 95%)",
    "update": "update (base + next 5%)",
}
FIRST = "first_in_window"  # the protocol: each window user's first interaction there
EVERY = "every_in_window"  # every interaction of the window, from everything before it
DONE = "benchmark.json"  # written into a run's folder once it is complete: reused on a rerun
RUN_ID = f"{os.getpid()}-{time.time():.0f}"  # which process timed a run

Rank = Callable[[list[np.ndarray]], np.ndarray]
"""Histories (item numbers) -> each one's top-K item numbers, history items excluded."""


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
    cfg = compose_config([*CONFIG, "seed=0", f"data.path={folder}"])
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


@dataclass(frozen=True)
class Targets:
    """Next-item targets: each one's user, what the user consumed before it (raw item ids, in
    time order) and the item (raw id)."""

    users: list[str]
    histories: list[list[str]]
    items: list[str]


def first_in_window(ordered: pd.DataFrame, n_before: int) -> Targets:
    """The issue's protocol: each user with an interaction at or after position `n_before` of
    `ordered` (time order) is evaluated on their first one there, from everything before it."""
    window = ordered[n_before:]
    first = window.groupby("user", sort=False).head(1)
    before = ordered[:n_before]
    by_user = {u: rows["item"].tolist() for u, rows in before.groupby("user", sort=False)}
    users = first["user"].tolist()
    return Targets(users, [by_user.get(u, []) for u in users], first["item"].tolist())


def every_in_window(ordered: pd.DataFrame, n_before: int) -> Targets:
    """Every interaction at or after position `n_before` of `ordered` (time order) as a target,
    in that order, from everything its user consumed before it (earlier window interactions
    included): thousands of targets where the issue's protocol has about a hundred."""
    users, items = ordered["user"].tolist(), ordered["item"].tolist()
    seen: dict[str, list[str]] = {}
    histories: list[list[str]] = []
    for at, (user, item) in enumerate(zip(users, items, strict=True)):
        if at >= n_before:
            histories.append(list(seen.get(user, [])))
        seen.setdefault(user, []).append(item)
    return Targets(users[n_before:], histories, items[n_before:])


def reading(rank: Rank, numbers: dict[str, int], targets: Targets) -> dict[str, Any]:
    """NDCG@10 and HR@10 of one target each, full ranking with the history excluded. A history
    item or a target the model does not know is left out of the history / a miss."""
    histories = [
        np.array([numbers[i] for i in history if i in numbers], np.int64)
        for history in targets.histories
    ]
    wanted = np.array([numbers.get(i, -1) for i in targets.items], np.int64)
    gains = np.zeros(len(wanted))
    hits = np.zeros(len(wanted))
    for start in range(0, len(histories), CHUNK):
        top = rank(histories[start : start + CHUNK])
        for row, (items, target) in enumerate(zip(top, wanted[start : start + CHUNK], strict=True)):
            at = np.flatnonzero(items[:K] == target)
            if target >= 0 and len(at):
                hits[start + row] = 1.0
                gains[start + row] = 1 / np.log2(at[0] + 2)
    return {
        "NDCG@10": float(gains.mean()),
        "HR@10": float(hits.mean()),
        "hits": int(hits.sum()),
        "targets": len(wanted),
        "users": len(set(targets.users)),
        "targets_in_catalog": int((wanted >= 0).sum()),
    }


def evaluate(run_dir: Path, readings: dict[str, Targets]) -> dict[str, Any]:
    """The run's figures on each reading of the test window, and on its own split."""
    p = load_run(run_dir)
    numbers = catalog_numbers(p, run_dir)
    ranker = agent_ranker(p.env, p.agent)

    def rank(histories: list[np.ndarray]) -> np.ndarray:
        users = np.zeros(len(histories), np.int64)  # the agents rank from the history alone
        return ranker(users, histories, K).cpu().numpy()

    figures: dict[str, Any] = {name: reading(rank, numbers, t) for name, t in readings.items()}
    first = readings[FIRST].users
    known = [u for u in first if p.key and pseudonym(p.key, u) in p.data.user_index_of_id]
    figures[FIRST]["users_known_to_model"] = len(known)
    figures["own_split"] = same_split(p)
    return figures


def completed(run_dir: Path) -> dict[str, Any] | None:
    """What a finished run of an earlier invocation recorded; None (and the folder removed)
    when it did not finish, so that it is made again."""
    done = run_dir / DONE
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return None


def trained(folder: Path, run_dir: Path, seed: int) -> dict[str, Any]:
    """Train (timed) unless an earlier invocation finished this run."""
    record = completed(run_dir)
    if record is None:
        started = time.perf_counter()
        train(compose_config([*CONFIG, f"seed={seed}", f"data.path={folder}"]), run_dir)
        record = {"seconds": time.perf_counter() - started, "process": RUN_ID}
        write_json(run_dir / DONE, record)
    return record


def updated(
    base: Path, run_dir: Path, log: Path, items: Path, options: UpdateOptions
) -> dict[str, Any]:
    """Update a copy of the base (timed) unless an earlier invocation finished it."""
    record = completed(run_dir)
    if record is None:
        shutil.copytree(base, run_dir)
        (run_dir / DONE).unlink()
        started = time.perf_counter()
        report = update_run(run_dir, log, items, options)
        seconds = time.perf_counter() - started
        report.pop("log")
        record = {"seconds": seconds, "process": RUN_ID, "report": report}
        write_json(run_dir / DONE, record)
    return record


def update_name(options: UpdateOptions) -> str:
    """The update's folder: `update` at the defaults, else named by what differs."""
    changed = [
        f"{f.name}{getattr(options, f.name)}"
        for f in dataclasses.fields(options)
        if getattr(options, f.name) != f.default
    ]
    return "-".join(["update", *changed])


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.array(values, np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std}


def summary(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of each model's figures, and update ÷ retrain both as the ratio
    of the means and as the mean of the per-seed ratios."""
    seeds = list(per_seed.values())
    metrics = [(r, m) for r in (FIRST, EVERY) for m in ("NDCG@10", "HR@10")]
    metrics += [("own_split", f"{s}/{m}") for s in ("valid", "test") for m in ("NDCG@10", "HR@10")]
    models: dict[str, Any] = {}
    for model in MODELS:
        models[model] = {
            f"{r}/{m}": mean_std([s["figures"][model][r][m] for s in seeds]) for r, m in metrics
        }
    ratios: dict[str, Any] = {}
    for r, m in metrics:
        name = f"{r}/{m}"
        upd = [s["figures"]["update"][r][m] for s in seeds]
        ret = [s["figures"]["retrain"][r][m] for s in seeds]
        each = [u / t for u, t in zip(upd, ret, strict=True) if t > 0]
        ratios[name] = {
            "ratio_of_means": float(np.mean(upd) / np.mean(ret)) if np.mean(ret) > 0 else None,
            # Over the seeds where the retrain scores at all (a few hits can be none).
            "mean_of_ratios": {**mean_std(each), "seeds": len(each)} if each else None,
        }
    time_ratios = [s["seconds"]["update"] / s["seconds"]["retrain"] for s in seeds]
    seconds = {k: mean_std([s["seconds"][k] for s in seeds]) for k in MODELS}
    return {
        "models": models,
        "update_over_retrain": ratios,
        "seconds": seconds,
        "time_ratio_update_over_retrain": mean_std(time_ratios),
    }


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


def run_seed(
    seed: int, out: Path, inputs: tuple[Path, Path, Path, Path], options: UpdateOptions
) -> dict[str, Any]:
    """Base, retrain and update of one seed, each reused from `out` where an earlier
    invocation finished it; their timings and update report."""
    base_data, retrain_data, log, items = inputs
    folder = out / f"seed-{seed}"
    base = trained(base_data, folder / "base", seed)
    retrain = trained(retrain_data, folder / "retrain", seed)
    update = updated(folder / "base", folder / update_name(options), log, items, options)
    print(f"seed {seed}: retrain {retrain['seconds']:.1f} s, update {update['seconds']:.1f} s")
    return {
        "runs": {"base": "base", "retrain": "retrain", "update": update_name(options)},
        "seconds": {k: r["seconds"] for k, r in zip(MODELS, (base, retrain, update), strict=True)},
        # Timings compare only within one process under the same load.
        "retrain_and_update_timed_in_one_process": retrain["process"] == update["process"],
        "update": update["report"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="results file")
    parser.add_argument("--data", type=Path, required=True, help="the ml-100k folder")
    parser.add_argument(
        "--out", type=Path, help="where the runs go, reused by a rerun (default: a temp folder)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, help="the update's steps (default: its own)")
    parser.add_argument("--replay", type=float, help="the update's replay share")
    parser.add_argument("--lr", type=float, help="the update's learning rate")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    given = {k: getattr(args, k) for k in ("steps", "replay", "lr") if getattr(args, k) is not None}
    options = UpdateOptions(**given)
    os.environ.setdefault(KEY_ENV, "update-benchmark")  # pseudonyms, as the preset asks
    out = args.out or Path(tempfile.mkdtemp(prefix="marlrec-update-"))
    ratings = read_ratings(args.data.resolve())
    n90, n95 = (round(len(ratings) * cut) for cut in CUTS)
    first90, window = ratings[:n90], ratings[n90:n95]
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
    inputs = (base_data, retrain_data, log, items)
    per_seed = {seed: run_seed(seed, out, inputs, options) for seed in seeds}
    readings = {FIRST: first_in_window(ratings, n95), EVERY: every_in_window(ratings, n95)}
    for seed, row in per_seed.items():
        folder = out / f"seed-{seed}"
        row["figures"] = {m: evaluate(folder / name, readings) for m, name in row["runs"].items()}
    result: dict[str, Any] = {
        "config": CONFIG,
        "seeds": seeds,
        "update_options": dataclasses.asdict(options),
        "interactions": {"train_90": n90, "update_5": n95 - n90, "test_5": len(ratings) - n95},
        "new_movies_in_update": len(new_movies),
        "readings": {
            FIRST: "the issue's: each user with an interaction in the last 5%, on their first "
            "one there, from everything before it",
            EVERY: "every interaction of the last 5%, from everything its user consumed before "
            "it (time order, file order among equal times)",
        },
        "summary": summary(per_seed),
        "per_seed": per_seed,
        "machine": machine(),
    }
    write_json(args.json, result)
    ratios = result["summary"]["update_over_retrain"]
    time_ratio = result["summary"]["time_ratio_update_over_retrain"]["mean"]
    print(
        f"NDCG@10 update/retrain over seeds {seeds} (ratio of means): "
        f"{FIRST} {ratios[f'{FIRST}/NDCG@10']['ratio_of_means']:.3f}, "
        f"{EVERY} {ratios[f'{EVERY}/NDCG@10']['ratio_of_means']:.3f}, "
        f"valid {ratios['own_split/valid/NDCG@10']['ratio_of_means']:.3f} (target >= 0.98); "
        f"time update/retrain {time_ratio:.3f} (target <= 0.20); wrote {args.json}"
    )


if __name__ == "__main__":
    main()
