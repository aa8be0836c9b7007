"""ML-100K benchmark: every baseline and the multi-agent configurations, over seeds, one table.

Protocol: every rating an implicit interaction, chronological leave-one-out, full ranking over all
items outside the user's history, test split, @10. Agents train with `marlrec train` against the
`replay` simulator (one run dir per configuration, step count and seed, kept under `--out`, so an
interrupted benchmark resumes where it stopped); baselines are fitted in this process, one file
per seed and SASRec epoch count. The table gives the mean ± standard deviation over seeds and is
written as markdown and JSON.

    python benchmarks/ml100k.py --data ../shared/data/ml-100k [--seeds 0,1,2] [--steps 1536]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from ml100k_baselines import MODELS, add_device_and_cache, item_embeddings

from marlrec.baselines.sasrec import SASRecBaseline
from marlrec.datasets.movielens import MovieLensDataset
from marlrec.evaluation.harness import EvalConfig, baseline_ranker, ranking_eval
from marlrec.io import atomic_write, write_json

# Multi-agent (and single-agent ablation) configurations: name -> `marlrec train` overrides.
AGENTS: dict[str, list[str]] = {
    "idqn": ["agent=idqn"],
    "idqn_shared": ["agent=idqn", "agent.share=true"],
    "ippo": ["agent=ippo"],
    "mappo": ["agent=mappo"],
    "mappo_shared": ["agent=mappo", "agent.share=true"],
    "dqn_single": ["env=single", "agent=dqn"],
    # The same agents choosing among collaborative (EASE) candidates instead of content ones.
    "ippo_ease": ["agent=ippo", "retrieval=ease"],
    "mappo_ease": ["agent=mappo", "retrieval=ease"],
    "idqn_ease": ["agent=idqn", "retrieval=ease"],
}
COLUMNS = {
    "HR@10": "test/HR@10",
    "NDCG@10": "test/NDCG@10",
    "Coverage@10": "test/Coverage@10",
    "ILD@10": "test/ILD@10",
    "return": "sim/mean_return",
    "env steps/s": "train_env_steps_per_second",
    "wall s": "wall_seconds",
}
RANKING = EvalConfig(metrics=["hr", "ndcg", "coverage", "ild"], ks=[10])


def train_agent(name: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """One `marlrec train` run; a finished run with the same settings is read, not trained again."""
    run_dir = args.out / "runs" / name / f"{args.steps}steps" / f"seed{seed}"
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        command = [
            str(Path(sys.executable).with_name("marlrec")),
            "train",
            "data=movielens",
            f"data.path={args.data.resolve()}",
            f"seed={seed}",
            "baseline=[]",
            "trainer.max_epochs=1",
            f"trainer.epoch_num_env_steps={args.steps}",
            "trainer.show_progress=false",
            f"hydra.run.dir={run_dir}",
            *AGENTS[name],
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = {"wall_seconds": time.perf_counter() - started}
        atomic_write(run_dir / "wall.json", lambda f: f.write(json.dumps(wall).encode()))
    metrics = json.loads(metrics_file.read_text())
    wall_file = run_dir / "wall.json"  # absent when the run was finished outside this script
    wall = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
    return {**metrics["eval"]["agent"], **metrics["train"], **wall}


def fit_baselines(args: argparse.Namespace, seed: int) -> dict[str, dict[str, float]]:
    """Every baseline for one seed; a finished seed's figures are read back, not fitted again."""
    done = args.out / "baselines" / f"seed{seed}-sasrec{args.sasrec_epochs}epochs.json"
    if done.is_file():
        return json.loads(done.read_text())
    rows = _fit_baselines(args, seed)
    write_json(done, rows)
    return rows


def _fit_baselines(args: argparse.Namespace, seed: int) -> dict[str, dict[str, float]]:
    data = MovieLensDataset(MovieLensDataset.Config(path=str(args.data))).load(
        seed=seed, cache_dir=args.cache
    )
    item_emb = item_embeddings(data, args.cache, torch.device(args.device))
    rows = {}
    for name, cls in MODELS.items():
        started = time.perf_counter()
        config = (
            SASRecBaseline.Config(epochs=args.sasrec_epochs, show_progress=False)
            if cls is SASRecBaseline
            else cls.Config()
        )
        model = cls(config, data=data, item_emb=item_emb, seed=seed)
        figures = ranking_eval(data, baseline_ranker(model), "test", RANKING, item_emb=item_emb)
        rows[name] = {**figures, "wall_seconds": time.perf_counter() - started}
    return rows


def summarise(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """policy -> column -> [mean, std] over seeds (std 0 for one seed)."""
    table: dict[str, dict[str, list[float]]] = {}
    for policy, rows in per_seed.items():
        table[policy] = {}
        for column, key in COLUMNS.items():
            # Baselines are ranked on the test split alone, so their keys carry no `test/`.
            values = [row.get(key, row.get(key.removeprefix("test/"))) for row in rows]
            values = [v for v in values if v is not None]
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                table[policy][column] = [statistics.fmean(values), spread]
    return table


def markdown(table: dict[str, dict[str, list[float]]], n_seeds: int) -> str:
    lines = [
        f"| policy (mean ± std over {n_seeds} seeds) | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for policy, row in table.items():
        cells = []
        for column in COLUMNS:
            if column not in row:
                cells.append("-")
                continue
            mean, std = row[column]
            digits = 4 if mean < 10 else 1
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--agents", default=",".join(AGENTS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=1536, help="training env steps per agent")
    parser.add_argument(
        "--sasrec-epochs", type=int, default=200, help="most epochs; early-stopped on validation"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ml100k"))
    add_device_and_cache(parser)
    args = parser.parse_args()
    if not (args.data / "u.data").is_file():
        parser.error(f"{args.data} holds no MovieLens-100K (u.data is missing)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds = [int(s) for s in args.seeds.split(",")]
    agents = [a for a in args.agents.split(",") if a]
    unknown = sorted(set(agents) - set(AGENTS))
    if unknown:
        parser.error(f"unknown agent configuration {unknown[0]}; known: {', '.join(AGENTS)}")
    per_seed: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        for name, row in fit_baselines(args, seed).items():
            per_seed.setdefault(name, []).append(row)
        for name in agents:
            print(f"training {name}, seed {seed}", flush=True)
            per_seed.setdefault(name, []).append(train_agent(name, seed, args))
    table = summarise(per_seed)
    text = markdown(table, len(seeds))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "table.md", lambda f: f.write((text + "\n").encode()))
    summary = {"seeds": seeds, "steps": args.steps, "sasrec_epochs": args.sasrec_epochs}
    write_json(args.out / "table.json", {**summary, "table": table})
    print(f"wrote {args.out / 'table.md'} and table.json")


if __name__ == "__main__":
    main()
