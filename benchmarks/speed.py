"""The engine's speed, every figure a ratio of two timings taken in this run on this machine.

    python benchmarks/speed.py --json speed.json [--quick] [--data path/to/ml-100k]

Prints one table (key, figure, target) and writes the JSON: the figures, the timings behind
them, the machine and the thread count. Shared machines are noisy, so each figure divides two
timings measured back to back; a key that cannot be measured here is null, with the reason.

| key | what |
|---|---|
| state_speedup | padded masked mean (the former state) ÷ the packed mean state, batch 256 |
| imitation_overhead | one imitation step ÷ the scoring networks' forward + backward alone |
| mappo_vs_tianshou_ppo, idqn_vs_tianshou_dqn | see `speed_agents.py` |
| session_eval_speedup | per-user session evaluation ÷ batched, 943 sessions |
| ranking_vs_floor | full-ranking evaluation ÷ history-masked `torch.topk`, 6,040 x 3,706 |
| concurrent_slowdown | two `experiment=quick` runs started together ÷ one alone |
| ml100k_run_speedup | `experiment=ml100k` wall time at commit df67300 ÷ now (not with --quick) |
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from threadpoolctl import threadpool_limits

from marlrec import registry
from marlrec.app import register_plugin_configs
from marlrec.data import Histories, RecData, fill_histories
from marlrec.envs import EnvContext
from marlrec.envs.core import SlateConfig
from marlrec.envs.slate import SlateEnvironment
from marlrec.evaluation.harness import (
    EvalConfig,
    ScoreRanker,
    baseline_actor,
    ranking_eval,
    session_eval,
    session_eval_per_user,
)
from marlrec.evaluation.ranking import top_k
from marlrec.io import write_json
from marlrec.pipeline import build
from marlrec.states import masked_mean
from marlrec.states.mean import MeanState
from marlrec.threads import available_cores
from marlrec.training.imitation import imitation_loss, logged_source

THREADS = 1
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
REFERENCE_COMMIT = "df67300"
TARGETS = {
    "state_speedup": (">=", 50),
    "imitation_overhead": ("<=", 2),
    "mappo_vs_tianshou_ppo": (">=", 2),
    "idqn_vs_tianshou_dqn": (">=", 2),
    "session_eval_speedup": (">=", 10),
    "ranking_vs_floor": ("<=", 1.2),
    "retrieval_scaling": ("<=", 5),
    "ann_recall_at_100": (">=", 0.95),
    "concurrent_slowdown": ("<=", 1.3),
    "ml100k_run_speedup": (">=", 3),
}
NOT_BUILT = "no approximate (FAISS) retrieval index yet: retrieval is exact over the catalog"


def seconds(work: Callable[[], Any], repeat: int, warmup: int = 1) -> float:
    """The median wall time of `work` over `repeat` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compose_config(overrides: list[str]) -> Any:
    register_plugin_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("marlrec.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def movielens(path: Path | None, cache: Path) -> RecData | None:
    if path is None or not (path / "u.data").is_file():
        return None
    section = {"name": "movielens", "path": str(path)}
    return registry.create("data", section).load(seed=0, cache_dir=cache)


# --- the measurements ----------------------------------------------------------------------


def state_speedup(data: RecData) -> dict[str, float]:
    """The padded masked mean over (256, longest, 384) against `embedding_bag` over packed ids."""
    rng = np.random.default_rng(0)
    users = rng.choice(np.flatnonzero([len(h) for h in data.train_histories]), 256)
    histories = [data.train_histories[u] for u in users]
    item_emb = torch.randn(data.n_items, 384, generator=torch.Generator().manual_seed(0))
    packed = Histories.pack(histories)
    ids, lengths = packed.padded()
    state = MeanState(MeanState.Config(), item_dim=384)
    padded = seconds(lambda: masked_mean(item_emb[ids.clamp(min=0)], lengths), 20)
    new = seconds(lambda: state.from_histories(packed, item_emb), 200)
    return {
        "state_padded_ms": 1e3 * padded,
        "state_packed_ms": 1e3 * new,
        "state_speedup": padded / new,
    }


def imitation_overhead(cache: Path, quick: bool) -> dict[str, float]:
    """One imitation step on a 10k-item synthetic catalog (610 users, about 100k interactions)
    against the scoring networks' forward and backward alone on the same batch."""
    cfg = compose_config(
        [
            "encoder=tfidf",
            "agent=mappo",
            "data.n_users=610",
            "data.n_items=10000",
            "data.min_interactions=100",
            "data.max_interactions=228",
            f"cache_dir={cache}",
            "device=cpu",
        ]
    )
    pipeline = build(cfg)
    agent, env = pipeline.agent, pipeline.env
    batch_size = pipeline.trainer.batch_size
    logged = logged_source(env, env.ctx.data.train_histories)  # as `imitate` draws them
    rng = np.random.default_rng(0)
    parameters = [
        p for r in range(len(agent.spec.roles)) for p in agent.scoring_network(r).parameters()
    ]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)

    def step() -> Any:
        batch = logged.choices(rng.integers(0, len(logged), batch_size), rng)
        if len(batch.actions):  # as in training: a draw with no logged item retrieved is skipped
            loss, _ = imitation_loss(agent, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return batch

    batch = step()
    while not len(batch.actions):
        batch = step()
    repeat = 5 if quick else 20

    def network_alone() -> None:
        optimizer.zero_grad()
        imitation_loss(agent, batch)[0].backward()

    whole, network = seconds(step, repeat), seconds(network_alone, repeat)
    return {
        "imitation_step_ms": 1e3 * whole,
        "imitation_network_ms": 1e3 * network,
        "imitation_rows": float(len(batch.actions)),
        "imitation_overhead": whole / network,
    }


def session_eval_speedup(data: RecData, n_sessions: int) -> dict[str, float]:
    """Simulated sessions of the popularity policy over EASE-free content candidates, against
    `replay` (logged data) or `synthetic`, one session at a time and all at once."""
    item_emb = torch.randn(data.n_items, 384, generator=torch.Generator().manual_seed(0))
    simulator = "synthetic" if data.truth is not None else "replay"
    ctx = EnvContext(
        data,
        item_emb,
        registry.create("state", {"name": "mean"}, item_dim=384),
        registry.create("simulator", {"name": simulator}, data=data, item_emb=item_emb),
        {"click": registry.create("reward", {"name": "click"}, data=data, item_emb=item_emb)},
        torch.device("cpu"),
        registry.create("retrieval", {"name": "content"}, data=data, item_emb=item_emb),
    )
    env = SlateEnvironment(SlateConfig(), ctx=ctx)
    pop = registry.create("baseline", {"name": "pop"}, data=data, item_emb=item_emb, seed=0)
    act = baseline_actor(env, pop)
    start = time.perf_counter()
    reference = session_eval_per_user(env, act, n_sessions, 0)
    per_user = time.perf_counter() - start
    start = time.perf_counter()
    batched = session_eval(env, act, n_sessions, 0)
    together = time.perf_counter() - start
    if abs(batched["mean_return"] - reference["mean_return"]) > 1e-9:
        raise RuntimeError("batched session evaluation disagrees with the per-user loop")
    return {
        "session_eval_per_user_s": per_user,
        "session_eval_batched_s": together,
        "session_eval_sessions": float(n_sessions),
        "session_eval_speedup": per_user / together,
    }


def ranking_vs_floor(quick: bool) -> dict[str, float]:
    """Every metric of the default evaluation over fixed scores against the floor: the same
    scores with each user's history masked, then `torch.topk`, chunk by chunk."""
    section = {"name": "synthetic", "n_users": 6040, "n_items": 3706}
    data = registry.create("data", section).load(seed=0, cache_dir=None)
    scores = torch.rand(data.n_users, data.n_items, generator=torch.Generator().manual_seed(0))
    item_emb = torch.randn(data.n_items, 384, generator=torch.Generator().manual_seed(0))
    eval_cfg = EvalConfig()
    rank = ScoreRanker(lambda users, histories: scores[torch.as_tensor(users)])

    def floor() -> None:
        for start in range(0, data.n_users, eval_cfg.chunk_users):
            users = np.arange(start, min(start + eval_cfg.chunk_users, data.n_users))
            histories = [data.history_before(int(u), "test") for u in users]
            chunk = fill_histories(scores[start : start + len(users)].clone(), histories, -1e30)
            top_k(chunk, max(eval_cfg.ks))

    def evaluate() -> None:
        ranking_eval(data, rank, "test", eval_cfg, item_emb=item_emb)

    repeat = 3 if quick else 7
    full, bare = seconds(evaluate, repeat), seconds(floor, repeat)
    return {
        "ranking_eval_s": full,
        "ranking_floor_s": bare,
        "ranking_vs_floor": full / bare,
    }


def concurrent_slowdown(cache: Path) -> dict[str, float]:
    """Two default `experiment=quick` runs started together, against one alone."""
    marlrec = [sys.executable, "-c", "import sys; from marlrec.cli import main; sys.exit(main())"]
    env = {**os.environ, "MARLREC_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)  # default settings: each run sizes its own threads

    def runs(count: int, tag: str) -> float:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    *marlrec,
                    "train",
                    "experiment=quick",
                    "trainer.show_progress=false",
                    f"hydra.run.dir={cache}/runs/{tag}-{i}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(count)
        ]
        if any(p.wait() != 0 for p in procs):
            raise RuntimeError(f"an experiment=quick run failed ({tag})")
        return time.perf_counter() - start

    runs(1, "warmup")  # fills the embedding cache, so the timed runs do the same work
    alone, together = runs(1, "alone"), runs(2, "together")
    return {
        "quick_alone_s": alone,
        "quick_together_s": together,
        "concurrent_slowdown": together / alone,
    }


def ml100k_run_speedup(data_path: Path, cache: Path) -> dict[str, float]:
    """`experiment=ml100k` at the reference commit and now, back to back, same cache."""
    env = {**os.environ, "MARLREC_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    args = ["train", "experiment=ml100k", f"data.path={data_path}", "trainer.show_progress=false"]
    entry = "import sys; from marlrec.cli import main; sys.exit(main())"
    old_tree = cache / "reference-tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), REFERENCE_COMMIT],
        check=True,
        capture_output=True,
    )
    try:
        figures = {}
        for label, tree in (("reference", old_tree), ("now", ROOT)):
            run_dir = cache / "runs" / f"ml100k-{label}"
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", entry, *args, f"hydra.run.dir={run_dir}"],
                env={**env, "PYTHONPATH": str(tree)},
                cwd=tree,
                check=True,
                capture_output=True,
            )
            figures[f"ml100k_{label}_s"] = time.perf_counter() - start
            metrics = read_json(run_dir / "metrics.json")
            figures[f"ml100k_{label}_test_ndcg10"] = metrics["eval"]["agent"]["test/NDCG@10"]
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)],
            check=False,
            capture_output=True,
        )
    figures["ml100k_run_speedup"] = figures["ml100k_reference_s"] / figures["ml100k_now_s"]
    return figures


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# --- the report ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        model = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
        ]
        cpu = model[0].split(":", 1)[1].strip() if model else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": available_cores(),
        "threads": THREADS,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": date.today().isoformat(),
    }


def verdict(key: str, value: float | None) -> str:
    if value is None:
        return "not measured"
    op, target = TARGETS[key]
    met = value >= target if op == ">=" else value <= target
    return "met" if met else "missed"


def print_table(results: dict[str, Any]) -> None:
    print(f"{'key':<24} {'figure':>10}  {'target':<8} verdict")
    for key, (op, target) in TARGETS.items():
        value = results.get(key)
        figure = f"{value:10.3f}" if isinstance(value, float) else f"{'-':>10}"
        print(f"{key:<24} {figure}  {op} {target:<5} {verdict(key, value)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("--quick", action="store_true", help="a few-minute version")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens-100K folder")
    parser.add_argument(
        "--only",
        action="append",
        help="measure only this step (state, imitation, agents, sessions, ranking, concurrent, "
        "ml100k); repeatable",
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    threadpool_limits(THREADS)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    reasons: dict[str, str] = {"retrieval_scaling": NOT_BUILT, "ann_recall_at_100": NOT_BUILT}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        ml100k = movielens(args.data, cache)
        histories = ml100k or registry.create("data", {"name": "synthetic"}).load(
            seed=0, cache_dir=None
        )
        results["state_data"] = histories.name
        steps: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("state", lambda: state_speedup(histories)),
            ("imitation", lambda: imitation_overhead(cache, args.quick)),
            ("agents", lambda: agents(args.quick)),
            ("sessions", lambda: session_eval_speedup(histories, 200 if args.quick else 943)),
            ("ranking", lambda: ranking_vs_floor(args.quick)),
            ("concurrent", lambda: concurrent_slowdown(cache)),
        ]
        if args.quick:
            reasons["ml100k_run_speedup"] = "not measured with --quick"
        elif ml100k is None:
            reasons["ml100k_run_speedup"] = f"MovieLens-100K is not at {args.data}"
        else:
            steps.append(("ml100k", lambda: ml100k_run_speedup(args.data.resolve(), cache)))
        for name, measure in steps:
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            print(f"speed: {name} ...", file=sys.stderr, flush=True)
            results.update(measure())
            torch.set_num_threads(THREADS)  # a pipeline build may have resized the pools
            print(f"speed: {name} done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    for key, reason in reasons.items():
        results[key] = None
        results[f"{key}_why"] = reason
    results["verdicts"] = {key: verdict(key, results.get(key)) for key in TARGETS}
    print_table(results)
    write_json(args.json, results)


def agents(quick: bool) -> dict[str, float]:
    from speed_agents import measure_agents

    return measure_agents(quick)


if __name__ == "__main__":
    main()
