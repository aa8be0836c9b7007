"""ML-100K benchmark: the agents, their ablations and every baseline, over seeds, one table.

Protocol: every rating an implicit interaction, chronological leave-one-out, full ranking over all
items outside the user's history, @10; anything chosen (early stopping, the best checkpoint) is
chosen on the validation split, the table reports the test split. Every policy, agents and
baselines alike, also plays simulated sessions against the same simulator (by default
`response_model`, fitted on the training split only) with the same simulated users per seed:
return, slates per session, and the shown slates' diversity and novelty.

Agents train with `marlrec train experiment=ml100k` plus each configuration's overrides (one run
dir per configuration, budget and seed under `--out`, so an interrupted benchmark resumes where
it stopped). Baselines are built once per seed by the same pipeline and evaluated by the same
harness (`marlrec.run.evaluate`'s rows). The table gives the mean ± standard deviation over seeds
and is written as markdown and JSON. Under it, each configuration against the preset and against
imitation only, user by user: every run's HR@10 and NDCG@10 per user (`per_user.json` in its run
dir, as `marlrec abtest` pairs them) paired with the other run of its seed, pooled over seeds.
Every fit and run uses `--threads` torch threads (1): float sums follow the thread count, so the
figures repeat whatever else runs on the machine.

    python benchmarks/ml100k.py --data ../shared/data/ml-100k [--seeds 0,1,2] [--steps N]
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

import numpy as np

from marlrec.abtest import held_out_per_user, paired_p_value
from marlrec.app import compose_config
from marlrec.evaluation.harness import baseline_actor, baseline_ranker, evaluate_policies
from marlrec.evaluation.rankers import Ranker
from marlrec.io import atomic_write, write_json
from marlrec.pipeline import build
from marlrec.privacy import KEY_ENV
from marlrec.recommend import load_run
from marlrec.run import EVAL_SESSIONS
from marlrec.threads import fit_threads

# RL strong enough to move the policy, best.pt chosen for its validation sessions' return within
# 2% of the highest valid NDCG@10 (README: the settings below chosen on validation).
RL_FOR_RETURN = ["trainer.select=return", "agent.lr=1e-3"]
ONE_IMITATION_STEP = [*RL_FOR_RETURN, "trainer.imitation_steps_per_update=1"]

PRESET = "mappo (preset)"
IMITATION_ONLY = "imitation only (no RL)"
SELECTED_ON = "valid/NDCG@10"  # what the preset is chosen on
TESTED_ON = "test/NDCG@10"

# Agent configurations: name -> overrides on top of `experiment=ml100k`. The preset's own
# configuration comes first; then what it is made of, taken apart.
AGENTS: dict[str, list[str]] = {
    PRESET: [],
    IMITATION_ONLY: ["trainer.max_epochs=0"],
    # The return settings, chosen on validation: of those whose validation return is at least
    # 5% above imitation's, the highest valid NDCG@10 (over today's preset, this first one; over
    # the earlier preset, the next).
    "RL for the session return (lr 1e-3, best by validation return)": RL_FOR_RETURN,
    "RL for the return with one imitation step (lr 1e-3, best by validation return)": (
        ONE_IMITATION_STEP
    ),
    # RL for the diversity role only; the relevance role, first in the slate, learns by imitation.
    "RL for the diversity role only (lr 1e-3, one imitation step, best by validation return)": [
        *ONE_IMITATION_STEP,
        "agent.rl_roles=[diversity]",
    ],
    "RL without imitation during it": ["trainer.imitation_steps_per_update=0"],
    "single agent (env=single, ppo)": ["env=single", "agent=ppo"],
    # One role fills the slate. Which one does not matter: under the one global reward a role's
    # name is a label, and `env.roles=[diversity]` repeats this run to the last digit.
    "one role alone": ["env.roles=[relevance]", "env.slots_per_role=4"],
    "union with the members' scores and ranks (the earlier preset)": ["retrieval.features=true"],
    "over SASRec candidates": ["retrieval=sasrec"],
    "over EASE candidates": ["retrieval=ease"],
    "ippo": ["agent=ippo"],
    "idqn": ["agent=idqn"],
}
BASELINES = ["random", "pop", "itemknn", "ease", "bpr", "sasrec", "sasrec_bce"]
COLUMNS = {
    "HR@10": "test/HR@10",
    "NDCG@10": "test/NDCG@10",
    "Coverage@10": "test/Coverage@10",
    "valid NDCG@10": "valid/NDCG@10",
    "return": "sim/mean_return",
    "slates/session": "sim/session_depth",
    "session ILD": "sim/session_diversity",
    "session novelty": "sim/session_novelty",
    "wall s": "wall_seconds",
}


def common_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        "experiment=ml100k",
        f"data.path={args.data.resolve()}",
        f"seed={seed}",
        f"simulator={args.simulator}",
    ]


def run_dir_of(name: str, seed: int, args: argparse.Namespace) -> Path:
    budget = f"{args.steps}steps" if args.steps else "preset"
    slug = name.split(" (")[0].replace(" ", "_")
    return Path(args.out / "runs" / slug / budget / f"seed{seed}")


def train_agent(name: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """One `marlrec train` run; a finished run with the same settings is read, not trained again."""
    run_dir = run_dir_of(name, seed, args)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        command = [sys.executable, "-m", "marlrec.cli", "train", *common_overrides(args, seed)]
        command += ["baseline=[]", "trainer.show_progress=false", f"hydra.run.dir={run_dir}"]
        command += [f"trainer.threads={args.threads}"]
        command += [f"trainer.epoch_num_env_steps={args.steps}"] if args.steps else []
        started = time.perf_counter()
        subprocess.run([*command, *AGENTS[name]], check=True, stdout=subprocess.DEVNULL)
        write_json(run_dir / "wall.json", {"wall_seconds": time.perf_counter() - started})
    metrics = json.loads(metrics_file.read_text())
    wall_file = run_dir / "wall.json"  # absent when the run was finished outside this script
    wall = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
    return {**metrics["eval"]["agent"], **metrics["train"], **wall}


def per_user(run_dir: Path) -> dict[str, np.ndarray]:
    """The run's HR@10 and NDCG@10 per held-out user on each split, computed once and kept in
    the run dir (`per_user.json`)."""
    saved = run_dir / "per_user.json"
    if not saved.is_file():
        pipeline = load_run(run_dir)
        figures = held_out_per_user(pipeline, pipeline.eval, seed=0)
        write_json(saved, {key: values.tolist() for key, values in figures.items()})
    return {key: np.asarray(values) for key, values in json.loads(saved.read_text()).items()}


def fit_baselines(args: argparse.Namespace, seed: int) -> dict[str, dict[str, float]]:
    """Every baseline for one seed; a finished seed's figures are read back, not fitted again."""
    done = args.out / "baselines" / f"seed{seed}-{args.simulator}.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    started = time.perf_counter()
    overrides = [*common_overrides(args, seed), f"baseline=[{','.join(args.baselines)}]"]
    pipeline = build(compose_config(overrides))
    rankers: dict[str, Ranker] = {n: baseline_ranker(b) for n, b in pipeline.baselines.items()}
    actors = {n: baseline_actor(pipeline.env, b) for n, b in pipeline.baselines.items()}
    # The session seed `marlrec train` evaluates with: the same simulated users as the agents.
    session_seed = seed + EVAL_SESSIONS
    rows = evaluate_policies(
        pipeline.data, pipeline.env, rankers, actors, pipeline.eval, session_seed
    )
    wall = time.perf_counter() - started
    rows = {name: {**row, "wall_seconds": wall} for name, row in rows.items()}
    write_json(done, rows)
    return rows


def summarise(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """policy -> column -> [mean, std] over seeds (std 0 for one seed)."""
    table: dict[str, dict[str, list[float]]] = {}
    for policy, rows in per_seed.items():
        table[policy] = {}
        for column, key in COLUMNS.items():
            values = [row[key] for row in rows if key in row]
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                table[policy][column] = [statistics.fmean(values), spread]
    return table


Users = dict[str, list[dict[str, np.ndarray]]]  # policy -> per seed: metric -> per-user values


def leads_over_preset(
    per_seed: dict[str, list[dict[str, float]]], users: Users | None = None
) -> dict[str, dict[str, float]]:
    """Each agent configuration's valid NDCG@10 lead over the preset, seed by seed, with a
    one-sided paired t-test: a configuration replaces the preset only when p < 0.05, so that
    leads smaller than what a seed's training moves do not (README, the preset taken apart).
    With `users`, the same lead user by user too (`p per user`), and the test difference with
    its two-sided p."""
    preset = [row[SELECTED_ON] for row in per_seed.get(PRESET, [])]
    leads: dict[str, dict[str, float]] = {}
    for name, rows in per_seed.items():
        if name == PRESET or name not in AGENTS or len(rows) != len(preset) or len(rows) < 2:
            continue
        own = [row[SELECTED_ON] for row in rows]
        lead = statistics.fmean(own) - statistics.fmean(preset)
        leads[name] = {"lead": lead, "p": paired_p_value(preset, own, alternative="greater")}
        if users is not None:
            valid = user_paired(users, PRESET, name, SELECTED_ON, alternative="greater")
            test = user_paired(users, PRESET, name, TESTED_ON)
            leads[name] |= {
                "p per user": valid["p"],
                "test": test["difference"],
                "test p": test["p"],
            }
    return leads


def user_paired(
    users: Users, a: str, b: str, metric: str, alternative: str = "two-sided"
) -> dict[str, float]:
    """B - A on `metric` user by user, each seed's users paired with A's run of that seed and
    pooled over seeds, with the paired t-test's p-value."""
    values_a = np.concatenate([seed[metric] for seed in users[a]])
    values_b = np.concatenate([seed[metric] for seed in users[b]])
    return {
        "difference": float((values_b - values_a).mean()),
        "p": paired_p_value(values_a, values_b, alternative=alternative),
    }


def against_imitation(
    per_seed: dict[str, list[dict[str, float]]], users: Users
) -> dict[str, dict[str, float]]:
    """What RL adds to imitation: each agent configuration's valid and test NDCG@10 against
    imitation only's, user by user (two-sided p), and its session return, each relative to
    imitation only's mean."""
    reference = per_seed.get(IMITATION_ONLY, [])
    means = {
        key: statistics.fmean(row[key] for row in reference)
        for key in (SELECTED_ON, TESTED_ON, COLUMNS["return"])
    }
    rows: dict[str, dict[str, float]] = {}
    for name, own in per_seed.items():
        if name == IMITATION_ONLY or name not in AGENTS or len(own) != len(reference):
            continue
        valid = user_paired(users, IMITATION_ONLY, name, SELECTED_ON)
        test = user_paired(users, IMITATION_ONLY, name, TESTED_ON)
        own_return = statistics.fmean(row[COLUMNS["return"]] for row in own)
        rows[name] = {
            "valid": valid["difference"] / means[SELECTED_ON],
            "valid p": valid["p"],
            "test": test["difference"] / means[TESTED_ON],
            "test p": test["p"],
            "return": own_return / means[COLUMNS["return"]] - 1,
        }
    return rows


def leads_markdown(leads: dict[str, dict[str, float]]) -> str:
    header = "| configuration | valid NDCG@10 lead over the preset | p (one-sided, seeds) |"
    per_user = any("p per user" in lead for lead in leads.values())
    if per_user:
        header += " p per user | test NDCG@10 against the preset | p per user (two-sided) |"
    lines = [header, "|---" * header.count(" | ") + "|---|"]
    for name, lead in leads.items():
        line = f"| {name} | {lead['lead']:+.4f} | {lead['p']:.3f} |"
        if per_user:
            line += f" {lead['p per user']:.3f} | {lead['test']:+.4f} | {lead['test p']:.3g} |"
        lines.append(line)
    return "\n".join(lines)


def imitation_markdown(rows: dict[str, dict[str, float]]) -> str:
    lines = [
        "| configuration | valid NDCG@10 against imitation only | p per user "
        "| test NDCG@10 | p per user | session return |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {100 * row['valid']:+.1f}% | {row['valid p']:.3g} "
            f"| {100 * row['test']:+.1f}% | {row['test p']:.3g} | {100 * row['return']:+.1f}% |"
        )
    return "\n".join(lines)


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
    parser.add_argument("--agents", default=";".join(AGENTS), help="semicolon-separated names")
    parser.add_argument("--baselines", default=",".join(BASELINES), help="comma-separated")
    parser.add_argument(
        "--steps", type=int, default=0, help="env steps per epoch (0: the preset's budget)"
    )
    parser.add_argument("--simulator", default="response_model")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of every fit and run: float sums, so the figures, follow it",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ml100k"))
    args = parser.parse_args()
    if not (args.data / "u.data").is_file():
        parser.error(f"{args.data} holds no MovieLens-100K (u.data is missing)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The preset pseudonymises users: a fixed key lets it run without a key file of the user's
    # (the figures, aggregates only, do not depend on the key).
    os.environ.setdefault(KEY_ENV, "marlrec-ml100k-benchmark")
    fit_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    agents = [a for a in args.agents.split(";") if a]
    args.baselines = [b for b in args.baselines.split(",") if b]
    unknown = sorted(set(agents) - set(AGENTS))
    if unknown:
        parser.error(f"unknown agent configuration {unknown[0]!r}; known: {'; '.join(AGENTS)}")
    per_seed: dict[str, list[dict[str, float]]] = {}
    users: Users = {}
    for seed in seeds:
        for name, row in fit_baselines(args, seed).items():
            per_seed.setdefault(name, []).append(row)
        for name in agents:
            print(f"training {name}, seed {seed}", flush=True)
            per_seed.setdefault(name, []).append(train_agent(name, seed, args))
            users.setdefault(name, []).append(per_user(run_dir_of(name, seed, args)))
        write_results(args, per_seed, users, seeds[: seeds.index(seed) + 1])


def write_results(
    args: argparse.Namespace,
    per_seed: dict[str, list[dict[str, float]]],
    users: Users,
    seeds: list[int],
) -> None:
    """The table so far (after each seed, so an interrupted benchmark keeps what it measured)."""
    table = summarise(per_seed)
    leads = leads_over_preset(per_seed, users)
    rl = against_imitation(per_seed, users) if IMITATION_ONLY in users else {}
    text = markdown(table, len(seeds))
    if leads:
        text += "\n\n" + leads_markdown(leads)
    if rl:
        text += "\n\n" + imitation_markdown(rl)
    print(text)
    write_json(
        args.out / "table.json",
        {
            "seeds": seeds,
            "steps": args.steps,
            "simulator": args.simulator,
            "threads": args.threads,
            "table": table,
            "leads_over_preset": leads,
            "against_imitation_only": rl,
        },
    )
    atomic_write(args.out / "table.md", lambda f: f.write((text + "\n").encode()))
    print(f"wrote {args.out / 'table.md'} and table.json")


if __name__ == "__main__":
    main()
