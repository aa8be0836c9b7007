"""Cold start on ML-100K: NDCG@10 and HR@10 of pop, content_knn and the agents (frozen encoder,
and with `--encoders frozen,lora` a LoRA-trained one beside it) under the standard protocol,
`cold_items` and `cold_users`. `--encoders lora-frozen-retrieval` trains LoRA while the
`content` retriever keeps the frozen embeddings (`retrieval.embeddings=frozen`; `cold_items`
only, the other protocols' EASE candidates read no embeddings).

Each protocol is its experiment preset (`ml100k`, `ml100k_cold_items`, `ml100k_cold_users`):
chronological leave-one-out, full ranking, test split; anything chosen (the best checkpoint) is
chosen on the validation split. Under `cold_items`, 10% of the items (drawn from the seed) have
no training interaction and are the only targets; under `cold_users`, 20% of the users keep their
last 5 training interactions and are the only ones evaluated. Every policy sees the same reshaped
split. The agents train with `marlrec train` (one run dir per protocol and seed under `--out`, so
an interrupted benchmark resumes); the baselines are built by the same pipeline and ranked by the
same harness. The JSON file is rewritten atomically after every run.

    python benchmarks/cold_start.py --json cold_start.json [--seeds 0,1,2] [--steps N]
        [--encoders frozen,lora] [--encoder-overrides "encoder.grad_items=4"]

Each agents' run records under `encoder` its mode, seconds per optimizer step and peak memory.
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
from typing import Any

from marlrec.app import compose_config
from marlrec.evaluation.harness import baseline_ranker, ranking_eval
from marlrec.io import write_json
from marlrec.pipeline import build

PROTOCOLS = {
    "standard": "ml100k",
    "cold_items": "ml100k_cold_items",
    "cold_users": "ml100k_cold_users",
}
# The standard protocol at the cold presets' budget and retriever (one epoch of 1,536 env steps
# over EASE candidates), not the larger `ml100k` preset, so the three rows differ in split only.
SAME_BUDGET = {
    "standard": [
        "retrieval=ease",
        "trainer.max_epochs=1",
        "trainer.epoch_num_env_steps=1536",
        "trainer.imitation_steps_per_update=0",
    ]
}
BASELINES = ["pop", "content_knn"]
# The agents' rows, one per encoder mode (`encoder.trainable`); `lora-frozen-retrieval` trains
# LoRA while the `content` retriever keeps the frozen embeddings (`retrieval.embeddings=frozen`).
AGENTS = {
    "frozen": "agents (mappo, frozen encoder)",
    "lora": "agents (mappo, LoRA encoder)",
    "full": "agents (mappo, fine-tuned encoder)",
    "lora-frozen-retrieval": "agents (mappo, LoRA encoder, frozen retrieval)",
}
MODE_OVERRIDES = {
    "frozen": [],
    "lora": ["encoder.trainable=lora"],
    "full": ["encoder.trainable=full"],
    "lora-frozen-retrieval": ["encoder.trainable=lora", "retrieval.embeddings=frozen"],
}
# Protocols whose candidates come from the text embeddings (`retrieval=content`): only there
# does `retrieval.embeddings` apply (EASE's candidates read no embeddings).
CONTENT_RETRIEVAL = {"cold_items"}
COLUMNS = {"NDCG@10": "test/NDCG@10", "HR@10": "test/HR@10"}
RANKING_ONLY = "eval.metrics=[hr,ndcg]"  # no simulated sessions: this table ranks


def overrides(args: argparse.Namespace, protocol: str, seed: int) -> list[str]:
    preset = PROTOCOLS[protocol]
    return [
        f"experiment={preset}",
        f"data.path={args.data.resolve()}",
        f"seed={seed}",
        RANKING_ONLY,
        *SAME_BUDGET.get(protocol, []),
    ]


def run_baselines(args: argparse.Namespace, protocol: str, seed: int) -> dict[str, dict[str, Any]]:
    """pop and content_knn on the protocol's split, with whether each can score cold items."""
    pipeline = build(
        compose_config([*overrides(args, protocol, seed), f"baseline=[{','.join(BASELINES)}]"])
    )
    rows = {}
    for name, baseline in pipeline.baselines.items():
        figures = ranking_eval(pipeline.data, baseline_ranker(baseline), "test", pipeline.eval)
        rows[name] = {
            **{f"test/{key}": value for key, value in figures.items()},
            "scores_unseen_items": baseline.scores_unseen_items,
        }
    return rows


def run_agents(
    args: argparse.Namespace, protocol: str, seed: int, encoder: str = "frozen"
) -> dict[str, Any]:
    """One `marlrec train` run; a finished one is read back, not trained again."""
    budget = f"{args.steps}steps" if args.steps else "preset"
    mode = "" if encoder == "frozen" else encoder  # frozen runs keep their earlier folders
    run_dir = args.out / protocol / budget / mode / f"seed{seed}"
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        command = [sys.executable, "-m", "marlrec.cli", "train", *overrides(args, protocol, seed)]
        command += ["baseline=[]", "trainer.show_progress=false", f"hydra.run.dir={run_dir}"]
        command += [f"trainer.epoch_num_env_steps={args.steps}"] if args.steps else []
        if encoder != "frozen":
            command += [*MODE_OVERRIDES[encoder], *args.encoder_overrides.split()]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        write_json(run_dir / "wall.json", {"wall_seconds": time.perf_counter() - started})
    metrics = json.loads(metrics_file.read_text())
    return {
        **metrics["eval"]["agent"],
        "scores_unseen_items": metrics.get("scores_unseen_items", {}).get("agent"),
        "retrieval_recall": metrics.get("retrieval", {}),
        "encoder": metrics.get("encoder", {"trainable": encoder}),
    }


def summarise(results: dict[str, Any]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """protocol -> policy -> column -> [mean, std] over the seeds measured."""
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for per_policy in results.values():
        for protocol, rows in per_policy.items():
            for policy, row in rows.items():
                cells = table.setdefault(protocol, {}).setdefault(policy, {})
                for column, key in COLUMNS.items():
                    cells.setdefault(column, []).append(row[key])
    return {
        protocol: {
            policy: {
                column: [
                    statistics.fmean(values),
                    statistics.stdev(values) if len(values) > 1 else 0.0,
                ]
                for column, values in cells.items()
            }
            for policy, cells in rows.items()
        }
        for protocol, rows in table.items()
    }


def markdown(summary: dict[str, dict[str, dict[str, list[float]]]], n_seeds: int) -> str:
    measured = {policy for rows in summary.values() for policy in rows}
    policies = [*BASELINES, *(row for row in AGENTS.values() if row in measured)]
    header = f"| protocol (mean ± std, {n_seeds} seed{'s' if n_seeds > 1 else ''}) | "
    header += " | ".join(f"{p} {c}" for p in policies for c in COLUMNS) + " |"
    lines = [header, "|---" * (1 + len(policies) * len(COLUMNS)) + "|"]
    for protocol, rows in summary.items():
        cells = []
        for policy in policies:
            for column in COLUMNS:
                mean, std = rows.get(policy, {}).get(column, [float("nan")] * 2)
                cells.append(f"{mean:.4f} ± {std:.4f}")
        lines.append(f"| {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="results file (rewritten)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=0, help="env steps per epoch (0: preset)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_start"))
    parser.add_argument(
        "--encoders", default="frozen", help=f"comma-separated: {', '.join(AGENTS)}"
    )
    parser.add_argument(
        "--encoder-overrides",
        default="",
        help="space-separated overrides for the trainable encoders' runs, e.g. "
        "'encoder.grad_items=32 encoder.refresh_every=100'",
    )
    args = parser.parse_args()
    if not (args.data / "u.data").is_file():
        parser.error(f"{args.data} holds no MovieLens-100K (u.data is missing)")
    protocols = [p for p in args.protocols.split(",") if p]
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        parser.error(f"unknown protocol {unknown[0]!r}; known: {', '.join(PROTOCOLS)}")
    encoders = [e for e in args.encoders.split(",") if e]
    unknown = sorted(set(encoders) - set(AGENTS))
    if unknown:
        parser.error(f"unknown encoder mode {unknown[0]!r}; known: {', '.join(AGENTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds = [int(s) for s in args.seeds.split(",")]
    # seed -> protocol -> policy -> figures; a file from an interrupted run is carried on.
    results: dict[str, Any] = (
        json.loads(args.json.read_text())["runs"] if args.json.is_file() else {}
    )
    for seed in seeds:
        for protocol in protocols:
            rows = results.setdefault(str(seed), {}).setdefault(protocol, {})
            if not all(name in rows for name in BASELINES):
                rows.update(run_baselines(args, protocol, seed))
                save(args, results)
            for encoder in encoders:
                if encoder == "lora-frozen-retrieval" and protocol not in CONTENT_RETRIEVAL:
                    print(f"{protocol}: {encoder} skipped, its candidates read no embeddings")
                    continue
                if AGENTS[encoder] not in rows:
                    print(f"training the agents: {protocol}, seed {seed}, {encoder}", flush=True)
                    rows[AGENTS[encoder]] = run_agents(args, protocol, seed, encoder)
                    save(args, results)
    print(markdown(summarise(results), len(results)))


def save(args: argparse.Namespace, results: dict[str, Any]) -> None:
    summary = summarise(results)
    write_json(args.json, {"steps": args.steps, "summary": summary, "runs": results})
    print(markdown(summary, len(results)), flush=True)


if __name__ == "__main__":
    main()
