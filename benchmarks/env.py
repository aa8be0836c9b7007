"""Environment speed: env steps per second on synthetic catalogs, one user at a time and batched.

Each catalog has random item embeddings (d=384) and users with random latent tastes answered
by the `synthetic` simulator; the env is `slate` with two roles of two slots and M=100
candidates. A policy picks a random available candidate. Modes:

- `aec`: the per-user PettingZoo env, one step at a time;
- `dummy`: Tianshou's default, `DummyVectorEnv` over B per-user envs (B=64 only);
- `batched`: `SlateEnvironment.make_vector(B)`, B sessions stepped as tensors;
- `collect-dummy`, `collect-batched`: the same through Tianshou's `Collector` (a random masked
  policy, a replay buffer), as training collects.

`retrieval %` is the share of the time spent scoring the catalog and drawing candidates, the
only part whose cost grows with the catalog; `answer %` the share spent in the simulator and
the reward plugins, which answer one user at a time; `other us/step` is the rest per env step
(observations, masks, state model, bookkeeping, and the collector's own work).

    python benchmarks/env.py [--items 1000 10000 100000] [--batch 64 256] [--seconds 3]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tianshou.algorithm.random import MARLRandomDiscreteMaskedOffPolicyAlgorithm
from tianshou.data import Batch, Collector, VectorReplayBuffer
from tianshou.env import BaseVectorEnv, DummyVectorEnv

from marlrec.data import GroundTruth, Interactions, RecData, leave_one_out
from marlrec.envs import EnvContext
from marlrec.envs.core import SlateConfig, SlateCore
from marlrec.envs.slate import SlateEnvironment
from marlrec.io import write_json
from marlrec.pipeline import resolve_device
from marlrec.retrieval.content import ContentRetriever
from marlrec.rewards.click import ClickReward
from marlrec.simulators.synthetic import SyntheticSimulator
from marlrec.states.mean import MeanState

DIM, N_CANDIDATES, N_USERS, N_TASTES = 384, 100, 2000, 8
DUMMY_COPIES = 64  # per-user envs in the DummyVectorEnv reference
HISTORY_RANGE = (10, 40)  # interactions per generated user


@dataclass
class Measurement:
    items: int
    mode: str
    batch: int
    env_steps: int
    seconds: float
    retrieval_seconds: float
    answer_seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.seconds

    @property
    def other_us_per_step(self) -> float:
        timed = self.retrieval_seconds + self.answer_seconds
        return 1e6 * (self.seconds - timed) / self.env_steps


def synthetic_data(n_items: int, seed: int) -> RecData:
    """Users consume items with Zipf-like popularity; tastes are random (for the simulator)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())
    lengths = rng.integers(*HISTORY_RANGE, size=N_USERS)
    items = [rng.choice(n_items, size=n, replace=False, p=popularity) for n in lengths]
    log = Interactions(
        user=np.repeat(np.arange(N_USERS), lengths).astype(np.int64),
        item=np.concatenate(items).astype(np.int64),
        time=np.concatenate([np.arange(n) for n in lengths]).astype(np.float64),
        value=np.ones(int(lengths.sum()), dtype=np.float32),
    )
    truth = GroundTruth(
        user_taste=rng.normal(size=(N_USERS, N_TASTES)).astype(np.float32),
        item_profile=rng.normal(size=(n_items, N_TASTES)).astype(np.float32),
        item_quality=rng.normal(scale=0.5, size=n_items).astype(np.float32),
    )
    return RecData(
        name=f"bench-{n_items}",
        n_users=N_USERS,
        n_items=n_items,
        interactions=log,
        item_text=[f"item {i}" for i in range(n_items)],
        split=leave_one_out(log, N_USERS),
        truth=truth,
    )


def environment(n_items: int, device: torch.device, seed: int) -> SlateEnvironment:
    data = synthetic_data(n_items, seed)
    generator = torch.Generator().manual_seed(seed)
    item_emb = torch.randn(n_items, DIM, generator=generator).to(device)
    state = MeanState(MeanState.Config(), item_dim=DIM).to(device)
    simulator = SyntheticSimulator(SyntheticSimulator.Config(), data=data, item_emb=item_emb)
    click = ClickReward(ClickReward.Config(), data=data, item_emb=item_emb)
    retriever = ContentRetriever(ContentRetriever.Config(), data=data, item_emb=item_emb)
    ctx = EnvContext(data, item_emb, state, simulator, {"click": click}, device, retriever)
    return SlateEnvironment(SlateConfig(n_candidates=N_CANDIDATES), ctx=ctx)


class Clocks:
    """Add up the time spent in the core's catalog-sized steps (scoring, drawing candidates)
    and in answering slates (simulator and rewards), by wrapping those methods."""

    GROUPS = {
        "retrieval": ("retrieval_scores", "retrieve"),
        "answer": ("answer",),
    }

    def __init__(self, core: SlateCore) -> None:
        self.core = core
        self.seconds = dict.fromkeys(self.GROUPS, 0.0)
        self.sync = core.ctx.device.type == "cuda"
        for group, names in self.GROUPS.items():
            for name in names:
                setattr(core, name, self._timed(group, getattr(core, name)))

    def _timed(self, group: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._synchronize()
            start = time.perf_counter()
            result = method(*args, **kwargs)
            self._synchronize()
            self.seconds[group] += time.perf_counter() - start
            return result

        return timed

    def _synchronize(self) -> None:
        if self.sync:
            torch.cuda.synchronize()

    def stop(self) -> tuple[float, float]:
        """Unwrap the methods; the retrieval and answer seconds."""
        for names in self.GROUPS.values():
            for name in names:
                delattr(self.core, name)
        return self.seconds["retrieval"], self.seconds["answer"]


# A run: (env steps, elapsed seconds, retrieval seconds, answer seconds).
Run = tuple[int, float, float, float]


def run_aec(env: SlateEnvironment, seconds: float, seed: int) -> Run:
    """One session at a time: observe, pick a random available candidate, step."""
    aec, rng = env.make(), np.random.default_rng(seed)
    aec.reset(seed=seed)
    clocks, steps = Clocks(env.core), 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        if aec.terminations[aec.agent_selection]:
            aec.reset()
            continue
        mask = aec.observe(aec.agent_selection)["action_mask"]
        aec.step(int(rng.choice(np.flatnonzero(mask))))
        steps += 1
    return steps, elapsed, *clocks.stop()


def masks_of(observations: Batch | np.ndarray) -> np.ndarray:
    """(B, M) action masks from stacked observations or per-copy dicts."""
    if isinstance(observations, Batch):
        return observations.mask
    return np.stack([np.asarray(o["mask"], dtype=bool) for o in observations])


def run_vector(envs: BaseVectorEnv, core: SlateCore, seconds: float, seed: int) -> Run:
    """All copies at once, finished sessions reset as a Tianshou collector does."""
    rng = np.random.default_rng(seed)
    envs.seed(seed)
    obs, _ = envs.reset()
    clocks, steps = Clocks(core), 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        masks = masks_of(obs)
        actions = np.where(masks, rng.random(masks.shape), -1.0).argmax(1)
        obs, _, terminated, truncated, _ = envs.step(actions)
        steps += len(actions)
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            obs[done], _ = envs.reset(done)
    timed = clocks.stop()
    envs.close()
    return steps, elapsed, *timed


def run_collector(envs: BaseVectorEnv, core: SlateCore, seconds: float, seed: int) -> Run:
    """Tianshou's Collector with a random masked policy; its first call (which compiles the
    buffer's helpers) is not timed."""
    policy = MARLRandomDiscreteMaskedOffPolicyAlgorithm.Policy(envs.action_space[0])
    collector = Collector(policy, envs, VectorReplayBuffer(50_000, len(envs)))
    envs.seed(seed)
    collector.reset()
    chunk = 8 * len(envs)
    collector.collect(n_step=chunk)
    clocks, steps = Clocks(core), 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        steps += collector.collect(n_step=chunk).n_collected_steps
    timed = clocks.stop()
    envs.close()
    return steps, elapsed, *timed


def measure(
    items: int, batches: list[int], seconds: float, device: torch.device, seed: int
) -> list[Measurement]:
    env = environment(items, device, seed)

    def dummy() -> DummyVectorEnv:
        return DummyVectorEnv([env.tianshou_env] * DUMMY_COPIES)

    runs: list[tuple[str, int, Callable[[], Run]]] = [
        ("aec", 1, lambda: run_aec(env, seconds, seed)),
        ("dummy", DUMMY_COPIES, lambda: run_vector(dummy(), env.core, seconds, seed)),
    ]
    for b in batches:
        runs.append(
            ("batched", b, lambda b=b: run_vector(env.make_vector(b), env.core, seconds, seed))
        )
    runs.append(
        ("collect-dummy", DUMMY_COPIES, lambda: run_collector(dummy(), env.core, seconds, seed))
    )
    b = max(batches)
    runs.append(
        ("collect-batched", b, lambda: run_collector(env.make_vector(b), env.core, seconds, seed))
    )
    results = []
    for mode, batch, run in runs:
        steps, elapsed, retrieval, answer = run()
        results.append(Measurement(items, mode, batch, steps, elapsed, retrieval, answer))
        print(f"  {items:>7} items  {mode:<15} B={batch:<4} {steps / elapsed:>10.0f} steps/s")
    return results


def table(results: list[Measurement]) -> str:
    lines = [
        "| items | mode | B | env steps/s | us/step | retrieval % | answer % | other us/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.items} | {r.mode} | {r.batch} | {r.steps_per_second:.0f} "
            f"| {1e6 / r.steps_per_second:.1f} | {100 * r.retrieval_seconds / r.seconds:.0f} "
            f"| {100 * r.answer_seconds / r.seconds:.0f} | {r.other_us_per_step:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per mode")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/env.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    # Tianshou warns on every 2-D (episode x role) return array.
    logging.getLogger("tianshou.data.stats").setLevel(logging.ERROR)
    torch.manual_seed(args.seed)
    print(f"device: {device}, M={N_CANDIDATES}, d={DIM}, {args.seconds:g} s per mode")
    results = [
        r
        for items in args.items
        for r in measure(items, args.batch, args.seconds, device, args.seed)
    ]
    print(table(results))
    rows = [
        {
            **asdict(r),
            "steps_per_second": r.steps_per_second,
            "other_us_per_step": r.other_us_per_step,
        }
        for r in results
    ]
    write_json(
        args.out, {"device": str(device), "n_candidates": N_CANDIDATES, "dim": DIM, "results": rows}
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
