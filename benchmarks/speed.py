"""The engine's speed, every figure a ratio of two timings taken in this run on this machine.

    python benchmarks/speed.py --json speed.json [--quick] [--data path/to/ml-100k] [--only KEY,...]

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
| retrieval_scaling | batched env slate step, FAISS retrieval: 1M-item catalog ÷ 1k items |
| ann_recall_at_100 | FAISS index's recall@100 against exact top-100, 1M items, env user states |
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
from threadpoolctl import threadpool_limits

from marlrec import registry
from marlrec.app import compose_config
from marlrec.data import Histories, Interactions, RecData, fill_histories, split_interactions
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
from marlrec.io import write_json
from marlrec.pipeline import build
from marlrec.retrieval.search import exact_top
from marlrec.states import masked_mean
from marlrec.states.mean import MeanState
from marlrec.threads import available_cores
from marlrec.training.imitation import imitation_loss, imitation_optimizer, logged_source

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
# The retrieval catalogs: unit item vectors of this size (1M x 384 floats would be 1.5 GB per
# copy, and FAISS's k-means over them minutes on one thread; 64 keeps the run to a few minutes).
RETRIEVAL_DIM = 64
RETRIEVAL_SIZES = (1_000, 1_000_000)


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


def interleaved(
    first: Callable[[], Any], second: Callable[[], Any], repeat: int
) -> tuple[float, float]:
    """Median wall times of two jobs run turn by turn, so that load on a shared machine falls
    on both alike (after one untimed run of each)."""
    first(), second()
    times: list[list[float]] = [[], []]
    for _ in range(repeat):
        for slot, work in enumerate((first, second)):
            start = time.perf_counter()
            work()
            times[slot].append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


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
    trainer = pipeline.trainer
    batch_size = trainer.batch_size
    # As `imitate` draws them (the logged positions precomputed once, before the steps).
    logged = logged_source(env, env.ctx.data.train_histories, trainer.imitation_cache_mb)
    rng = np.random.default_rng(0)
    optimizer = imitation_optimizer(agent, trainer.imitation_lr)

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

    whole, network = interleaved(step, network_alone, repeat)
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
    scores, fetched by the same function, with each user's history masked, then `torch.topk`,
    chunk by chunk. What lies above the floor is ties by id and the metrics."""
    section = {"name": "synthetic", "n_users": 6040, "n_items": 3706}
    data = registry.create("data", section).load(seed=0, cache_dir=None)
    scores = torch.rand(data.n_users, data.n_items, generator=torch.Generator().manual_seed(0))
    item_emb = torch.randn(data.n_items, 384, generator=torch.Generator().manual_seed(0))
    eval_cfg = EvalConfig()

    def score(users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        return scores[torch.as_tensor(users)]

    rank = ScoreRanker(score)

    def floor() -> None:
        for start in range(0, data.n_users, eval_cfg.chunk_users):
            users = np.arange(start, min(start + eval_cfg.chunk_users, data.n_users))
            histories = [data.history_before(int(u), "test") for u in users]
            chunk = fill_histories(score(users, histories), histories, -torch.inf)
            chunk.topk(max(eval_cfg.ks), dim=1)

    def evaluate() -> None:
        ranking_eval(data, rank, "test", eval_cfg, item_emb=item_emb)

    full, bare = interleaved(evaluate, floor, 5 if quick else 15)
    return {
        "ranking_eval_s": full,
        "ranking_floor_s": bare,
        "ranking_vs_floor": full / bare,
    }


def retrieval_catalog(n_items: int, n_users: int, seed: int = 0) -> tuple[RecData, torch.Tensor]:
    """Unit item vectors around sqrt(n_items) topic centres (text embeddings cluster so), and
    users with 20 logged items from two topics each (RETRIEVAL_DIM dimensions)."""
    rng = np.random.default_rng(seed)
    n_topics = max(2, round(np.sqrt(n_items)))
    centres = rng.standard_normal((n_topics, RETRIEVAL_DIM)).astype(np.float32)
    topic = rng.integers(n_topics, size=n_items)
    noise = rng.standard_normal((n_items, RETRIEVAL_DIM), dtype=np.float32)
    item_emb = torch.nn.functional.normalize(torch.from_numpy(centres[topic] + 0.7 * noise), dim=1)
    by_topic = np.argsort(topic, kind="stable")
    starts = np.searchsorted(topic[by_topic], np.arange(n_topics + 1))
    length = 20
    tastes = rng.integers(n_topics, size=(n_users, 2)).repeat(length // 2, axis=1)
    sizes = starts[tastes + 1] - starts[tastes]
    items = by_topic[starts[tastes] + (rng.random(tastes.shape) * sizes).astype(np.int64)]
    interactions = Interactions(
        user=np.repeat(np.arange(n_users), length),
        item=items.reshape(-1).astype(np.int64),
        time=np.tile(np.arange(length, dtype=np.float64), n_users),
        value=np.ones(n_users * length, dtype=np.float32),
    )
    data = RecData(
        name=f"retrieval-{n_items}",
        n_users=n_users,
        n_items=n_items,
        interactions=interactions,
        item_text=[""] * n_items,
        split=split_interactions(interactions, n_users, method="loo", seed=[seed, 1]),
    )
    return data, item_emb


def retrieval_env(data: RecData, item_emb: torch.Tensor) -> SlateEnvironment:
    """The slate env over a retrieval catalog: mean state, FAISS content retrieval, replay
    clicks, sessions of one slate (so that every slate retrieves)."""

    def plugin(group: str, name: str, **options: Any) -> Any:
        return registry.create(group, {"name": name, **options}, data=data, item_emb=item_emb)

    ctx = EnvContext(
        data,
        item_emb,
        registry.create("state", {"name": "mean"}, item_dim=RETRIEVAL_DIM),
        plugin("simulator", "replay"),
        {"click": plugin("reward", "click")},
        torch.device("cpu"),
        plugin("retrieval", "content", index="faiss"),
    )
    return SlateEnvironment(SlateConfig(max_slates=1), ctx=ctx)


def slate_round(env: SlateEnvironment, n_envs: int) -> Callable[[], None]:
    """One round of `n_envs` one-slate sessions: open them (state and retrieval for all), then
    step every slot, each session taking its first free candidate."""
    vector = env.make_vector(n_envs)
    rows = np.arange(n_envs)
    users = np.arange(n_envs) % env.ctx.data.n_users
    counter = iter(range(10**9))

    def one_round() -> None:
        first = next(counter) * n_envs
        seeds = list(range(first, first + n_envs))
        observed, _ = vector.reset(rows, seed=seeds, options={"user": users})
        for _ in range(env.core.slate_size):
            actions = torch.as_tensor(observed.mask).float().argmax(dim=1)
            observed, *_ = vector.step(actions.numpy(), rows)

    return one_round


def retrieval_scaling(quick: bool) -> dict[str, Any]:
    """A batched env step, retrieval included, over a 1k- and a 1M-item catalog, both through
    the FAISS index (built before timing, rounds interleaved), and that index's recall@100 on
    the 1M catalog."""
    figures: dict[str, Any] = {}
    envs = []
    for n_items in RETRIEVAL_SIZES:
        start = time.perf_counter()
        data, item_emb = retrieval_catalog(n_items, n_users=2048)
        envs.append(retrieval_env(data, item_emb))
        envs[-1].make_vector(1).reset(0, options={"user": [0]})  # builds the index
        figures[f"retrieval_setup_{n_items}_s"] = time.perf_counter() - start
    large = envs[-1]
    rounds = [slate_round(env, n_envs=256) for env in envs]
    times = interleaved(*rounds, repeat=3 if quick else 9)
    for n_items, seconds_per_round in zip(RETRIEVAL_SIZES, times, strict=True):
        figures[f"env_step_{n_items}_ms"] = 1e3 * seconds_per_round / large.core.slate_size
    figures["retrieval_scaling"] = times[1] / times[0]
    index = large.ctx.retriever.search.faiss_index
    figures.update(retrieval_nlist=index.nlist, retrieval_nprobe=index.nprobe)
    figures["retrieval_note"] = (
        f"{RETRIEVAL_DIM}-dimensional unit item vectors around sqrt(n_items) topic centres, "
        "not the encoder's 384 dimensions: 1M x 384 floats are 1.5 GB per copy and FAISS's "
        "k-means over them takes minutes on one thread (not measured here); default index "
        "settings; sessions of one slate, so that every slate retrieves"
    )
    figures.update(ann_recall(large, n_users=256))
    return figures


def ann_recall(env: SlateEnvironment, n_users: int) -> dict[str, float]:
    """The index's recall@100 against the exact top 100 (chunked scan), consumed items left
    out of both, for the states of the catalog's first users."""
    core, retriever = env.core, env.ctx.retriever
    packed = core.pack(env.ctx.data.train_histories[:n_users])
    states = core.states(packed)
    approximate = retriever.top(states, packed, 100)[0]
    start = time.perf_counter()
    queries = torch.nn.functional.normalize(states, dim=-1)
    exact = exact_top(queries, retriever.item_unit, 100, packed, chunk_items=65536)[0]
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    retriever.top(states, packed, 100)
    approximate_s = time.perf_counter() - start
    pairs = zip(approximate.tolist(), exact.tolist(), strict=True)
    overlap = [len(set(a) & set(b)) / 100 for a, b in pairs]
    return {
        "ann_exact_search_s": exact_s,
        "ann_search_s": approximate_s,
        "ann_queries": float(n_users),
        "ann_recall_at_100": float(np.mean(overlap)),
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
    """`experiment=ml100k` at the reference commit and now, back to back, same cache. Today's
    run is held to the reference preset's work (mappo over EASE candidates, one epoch of 1,536
    env steps, the same baselines, no validation after imitation: the reference has no epoch 0),
    since the preset itself has grown since."""
    env = {**os.environ, "MARLREC_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    args = ["train", "experiment=ml100k", f"data.path={data_path}", "trainer.show_progress=false"]
    same_work = [
        "retrieval=ease",
        "trainer.max_epochs=1",
        "trainer.epoch_num_env_steps=1536",
        "trainer.imitation_steps=1000",
        "trainer.imitation_steps_per_update=0",
        "trainer.validate_after_imitation=false",
        "baseline=[random,pop,itemknn,ease]",
        "privacy.pseudonymise=false",
    ]
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
                [
                    sys.executable,
                    "-c",
                    entry,
                    *args,
                    *(same_work if label == "now" else []),
                    f"hydra.run.dir={run_dir}",
                ],
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


# Each measurement and the keys it gives, in the order they run.
STEP_KEYS = {
    "state": ("state_speedup",),
    "imitation": ("imitation_overhead",),
    "agents": ("mappo_vs_tianshou_ppo", "idqn_vs_tianshou_dqn"),
    "sessions": ("session_eval_speedup",),
    "ranking": ("ranking_vs_floor",),
    "retrieval": ("retrieval_scaling", "ann_recall_at_100"),
    "concurrent": ("concurrent_slowdown",),
    "ml100k": ("ml100k_run_speedup",),
}


def parse_only(text: str | None) -> set[str]:
    """The keys `--only` names (every key without it); an unknown one is an error."""
    if text is None:
        return set(TARGETS)
    keys = {key.strip() for key in text.split(",") if key.strip()}
    unknown = sorted(keys - set(TARGETS))
    if unknown:
        raise SystemExit(f"unknown key {unknown[0]!r} in --only; keys: {', '.join(TARGETS)}")
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("--quick", action="store_true", help="a few-minute version")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens-100K folder")
    parser.add_argument("--only", help="measure only these keys, comma-separated")
    args = parser.parse_args()
    wanted = parse_only(args.only)
    torch.set_num_threads(THREADS)
    threadpool_limits(THREADS)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    reasons = {key: "not asked for (--only)" for key in TARGETS if key not in wanted}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        ml100k = movielens(args.data, cache)
        histories = ml100k or registry.create("data", {"name": "synthetic"}).load(
            seed=0, cache_dir=None
        )
        results["state_data"] = histories.name
        measures: dict[str, Callable[[], dict[str, Any]]] = {
            "state": lambda: state_speedup(histories),
            "imitation": lambda: imitation_overhead(cache, args.quick),
            "agents": lambda: agents(args.quick),
            "sessions": lambda: session_eval_speedup(histories, 200 if args.quick else 943),
            "ranking": lambda: ranking_vs_floor(args.quick),
            "retrieval": lambda: retrieval_scaling(args.quick),
            "concurrent": lambda: concurrent_slowdown(cache),
        }
        if "ml100k_run_speedup" in wanted and args.quick:
            reasons["ml100k_run_speedup"] = "not measured with --quick"
        elif "ml100k_run_speedup" in wanted and ml100k is None:
            reasons["ml100k_run_speedup"] = f"MovieLens-100K is not at {args.data}"
        else:
            measures["ml100k"] = lambda: ml100k_run_speedup(args.data.resolve(), cache)
        for name, measure in measures.items():
            if not set(STEP_KEYS[name]) & wanted:
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
