"""Agent training speed: marlrec's `mappo` and `idqn` against stock Tianshou PPO and DQN.

Both sides train in this process, one after the other, with one torch thread, on the same
synthetic task (data, text embeddings, simulator and rewards of one built pipeline), with the
same hidden size, batch size, replay buffer size, env copies, env steps per collect step,
gradient steps per env step (DQN) and passes per collected batch (PPO), for the same number of
env steps, each driven by Tianshou's own online trainer:

- marlrec: the agent's own `fit` (marlrec's training loop around Tianshou's trainer) on the
  two-role `slate` env, stepped by its tensor-batched vector env (`trainer.vector_env=batched`),
  no imitation, one epoch, one test session, no validation.
- stock Tianshou: `tianshou.algorithm.DQN` / `PPO` with `tianshou.utils.net.common.Net` (two
  hidden layers of the agent's hidden size; PPO's actor and critic are
  `tianshou.utils.net.discrete.DiscreteActor` / `DiscreteCritic` over such a `Net`) on marlrec's
  single-agent `single` gymnasium env (one agent fills the same slate of 4 slots among the same
  M candidates, same flat observation but a role one-hot of size 1), in `DummyVectorEnv`,
  trained by `algorithm.run_training(OffPolicyTrainerParams / OnPolicyTrainerParams)`.
  DQN reads the env's `{"obs", "mask"}` observation as stock Tianshou does (the network gets
  `obs.obs`, the mask applies to the Q-values); stock PPO's actor cannot read a masked
  observation (stack notes, pitfall 3), so its env copies are wrapped in `DropMask`, which
  gives the flat observation alone and turns an unavailable candidate into the first available.

Timed: the wall clock of the training collector's `collect` calls (env steps, policy forward
passes, buffer writes) plus Tianshou's own clock of the gradient updates (each update's
`train_time`), which leave out test steps, validation, logging and trainer bookkeeping on both
sides; `*_train_seconds` is the trainer's wall clock less its test steps, for reference. Each
measurement first runs a short warm-up (numba compiles Tianshou's buffer and return helpers on
first use). `*_transitions_per_s_per_role` is env steps per second divided by the number of
roles: each env step is one role's turn.

With `--same-networks` it also times stock Tianshou PPO and DQN driven by marlrec's
candidate-scoring networks (marlrec's single-agent `ppo` and `dqn`, on the same `DummyVectorEnv`
copies), which tells the networks' cost apart from everything else.

    python benchmarks/speed_agents.py [--quick] [--seed 0] [--same-networks] [--env-steps N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tianshou.algorithm import DQN, PPO
from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, InfoStats, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.trainer import OffPolicyTrainerParams, OnPolicyTrainerParams
from tianshou.utils.net.common import Net
from tianshou.utils.net.discrete import DiscreteActor, DiscreteCritic
from torch.utils.tensorboard import SummaryWriter

from marlrec import registry
from marlrec.app import compose_config
from marlrec.envs import Environment
from marlrec.pipeline import Pipeline, build
from marlrec.settings import TrainerConfig, TrainRun
from marlrec.training import loop as training

THREADS = 1
WARMUP_ENV_STEPS = 64
QUICK = {"env_steps": 2000, "n_users": 200, "n_items": 400}
FULL = {"env_steps": 10000, "n_users": 600, "n_items": 1000}


# ---------------------------------------------------------------------------------------------
# The shared task


def build_pipeline(seed: int, n_users: int, n_items: int, cache: Path, device: str) -> Pipeline:
    """The two-role `slate` task with TF-IDF item embeddings (no language model)."""
    overrides = [
        "encoder=tfidf",
        "env=slate",
        "agent=mappo",
        "trainer.vector_env=batched",
        "trainer.imitation_steps=0",
        "trainer.show_progress=false",
        f"data.n_users={n_users}",
        f"data.n_items={n_items}",
        f"seed={seed}",
        f"device={device}",
        f"cache_dir={cache}",
    ]
    return build(compose_config(overrides))


def trainer_settings(pipeline: Pipeline, env_steps: int) -> TrainerConfig:
    """The configured trainer, made into one timed epoch without imitation or validation."""
    return dataclasses.replace(
        pipeline.trainer,
        max_epochs=1,
        epoch_num_env_steps=env_steps,
        vector_env="batched",
        imitation_steps=0,
        test_episodes=1,
        eval_every_epochs=0,
        patience=0,
        resume=False,
        show_progress=False,
    )


def single_agent_env(pipeline: Pipeline) -> Environment:
    """marlrec's `single` gymnasium env over the same data, embeddings, simulator and rewards."""
    slate = pipeline.env.slate_config
    section = {
        "name": "single",
        "slate_size": len(pipeline.env.spec.roles) * slate.slots_per_role,
        "n_candidates": slate.n_candidates,
        "max_slates": slate.max_slates,
        "history_len": slate.history_len,
        "explore_share": slate.explore_share,
        "explore_long_tail": slate.explore_long_tail,
    }
    return registry.create("env", section, ctx=pipeline.env.ctx)


class DropMask(gym.Wrapper):
    """The flat observation without its action mask, for networks that cannot read a mask.

    An action on an unavailable candidate becomes the first available one (the env refuses it).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = env.observation_space["obs"]
        self._mask = np.ones(env.action_space.n, dtype=bool)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._mask = obs["mask"]
        return obs["obs"], info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = int(action)
        if not self._mask[action]:
            action = int(np.flatnonzero(self._mask)[0])
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._mask = obs["mask"]
        return obs["obs"], reward, terminated, truncated, info


# ---------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Timing:
    env_steps: int
    collect_seconds: float
    update_seconds: float
    train_seconds: float  # the trainer's wall clock less its test steps (adds its bookkeeping)

    @classmethod
    def of(cls, stats: InfoStats, collect_seconds: float) -> Timing:
        t = stats.timing
        return cls(int(stats.train_step), collect_seconds, t.train_time_update, t.train_time)

    @property
    def seconds(self) -> float:
        return self.collect_seconds + self.update_seconds

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / max(self.seconds, 1e-9)


@contextlib.contextmanager
def captured_trainer_stats() -> Iterator[list[InfoStats]]:
    """The Tianshou trainer statistics of marlrec's training loop, which `fit` summarises."""
    captured: list[InfoStats] = []
    original = training.TrainingLoop.summary

    def summary(self: training.TrainingLoop, stats: InfoStats) -> dict[str, float]:
        captured.append(stats)
        return original(self, stats)

    training.TrainingLoop.summary = summary  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        training.TrainingLoop.summary = original  # type: ignore[method-assign]


@contextlib.contextmanager
def timed_training_collects() -> Iterator[list[float]]:
    """Wall-clock seconds spent in training collectors' `collect` (Tianshou 2.0.1 keeps none).

    Training collectors are told apart from test collectors by their exploration noise.
    """
    spent = [0.0]
    had_own = "collect" in vars(Collector)
    original = Collector.collect

    def collect(self: Collector, *args: Any, **kwargs: Any) -> Any:
        if not self.exploration_noise:
            return original(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    Collector.collect = collect  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        if had_own:
            Collector.collect = original  # type: ignore[method-assign]
        else:
            del Collector.collect


def reseed(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def time_marlrec(
    agent_name: str, pipeline: Pipeline, t: TrainerConfig, seed: int, env: Environment | None = None
) -> Timing:
    """marlrec's agent trained by its own `fit` on `env` (the pipeline's by default) for `t`'s
    one epoch, its env copies of the kind `t.vector_env` names."""
    reseed(seed)
    env = env or pipeline.env
    hidden = int(pipeline.cfg.agent.hidden)
    section = {"name": agent_name, "hidden": hidden}
    agent = registry.create("agent", section, spec=env.spec, device=pipeline.device)
    with (
        tempfile.TemporaryDirectory() as logs,
        captured_trainer_stats() as captured,
        timed_training_collects() as collect_seconds,
    ):
        writer = SummaryWriter(logs)
        run = TrainRun(
            trainer=t,
            logger=pipeline.logger,
            seed=seed,
            writer=writer,
            save_checkpoint=lambda epoch: None,
            save_best=lambda: None,
        )
        try:
            training.fit(agent, env, run)
        finally:
            writer.close()
    (stats,) = captured
    return Timing.of(stats, collect_seconds[0])


def stock_dqn(env: Environment, t: TrainerConfig, hidden: int, device: torch.device) -> tuple:
    """Stock DQN, its collector over `DummyVectorEnv` copies of `env`, and its exploration hook."""
    probe = env.make()
    obs_size = probe.observation_space["obs"].shape[0]
    n_actions = probe.action_space.n
    c = registry.load("agent", "idqn").Config()  # the same hyper-parameters as `idqn`
    hidden_sizes = [hidden, hidden]
    net = Net(state_shape=obs_size, action_shape=n_actions, hidden_sizes=hidden_sizes).to(device)
    policy = DiscreteQLearningPolicy(
        model=net, action_space=probe.action_space, eps_training=c.eps_start
    )
    algorithm = DQN(
        policy=policy,
        optim=AdamOptimizerFactory(lr=c.lr),
        gamma=c.gamma,
        n_step_return_horizon=c.n_step,
        target_update_freq=c.target_update_freq,
        is_double=c.double_q,
    )
    envs = DummyVectorEnv([env.make] * t.num_train_envs)
    buffer = VectorReplayBuffer(t.buffer_size, t.num_train_envs)
    total = t.max_epochs * t.epoch_num_env_steps

    def schedule(epoch: int, env_step: int) -> None:
        """Exploration decays as `idqn`'s does."""
        progress = min(1.0, env_step / max(1.0, c.eps_decay_fraction * total))
        policy.set_eps_training(c.eps_start + progress * (c.eps_end - c.eps_start))

    return algorithm, Collector(algorithm.policy, envs, buffer, exploration_noise=True), schedule


def stock_ppo(env: Environment, t: TrainerConfig, hidden: int, device: torch.device) -> tuple:
    """Stock PPO and its collector over `DummyVectorEnv` copies of `env` without the mask."""
    probe = DropMask(env.make())
    obs_size = probe.observation_space.shape[0]
    n_actions = probe.action_space.n
    c = registry.load("agent", "mappo").Config()  # the same hyper-parameters as `mappo`
    actor = DiscreteActor(
        preprocess_net=Net(state_shape=obs_size, hidden_sizes=[hidden, hidden]),
        action_shape=n_actions,
        softmax_output=False,
    ).to(device)
    critic = DiscreteCritic(
        preprocess_net=Net(state_shape=obs_size, hidden_sizes=[hidden, hidden])
    ).to(device)
    algorithm = PPO(
        policy=DiscreteActorPolicy(
            actor=actor, action_space=probe.action_space, deterministic_eval=True
        ),
        critic=critic,
        optim=AdamOptimizerFactory(lr=c.lr),
        eps_clip=c.eps_clip,
        vf_coef=c.vf_coef,
        ent_coef=c.ent_coef,
        max_grad_norm=c.max_grad_norm or None,
        gae_lambda=c.gae_lambda,
        gamma=c.gamma,
    )
    envs = DummyVectorEnv([lambda: DropMask(env.make())] * t.num_train_envs)
    buffer = VectorReplayBuffer(t.buffer_size, t.num_train_envs)
    return algorithm, Collector(algorithm.policy, envs, buffer, exploration_noise=True), None


def time_stock(
    make: Callable[..., tuple],
    env: Environment,
    t: TrainerConfig,
    hidden: int,
    device: torch.device,
    seed: int,
    off_policy: bool,
) -> Timing:
    """A stock Tianshou algorithm trained by Tianshou's own trainer for `t`'s one epoch."""
    reseed(seed)
    algorithm, collector, schedule = make(env, t, hidden, device)
    collector.env.seed([seed + i for i in range(t.num_train_envs)])
    common: dict[str, Any] = dict(
        training_collector=collector,
        test_collector=None,
        max_epochs=t.max_epochs,
        epoch_num_steps=t.epoch_num_env_steps,
        collection_step_num_env_steps=t.collect_num_env_steps,
        batch_size=t.batch_size,
        training_fn=schedule,
        verbose=False,
        show_progress=False,
    )
    if off_policy:
        params: Any = OffPolicyTrainerParams(
            update_step_num_gradient_steps_per_sample=t.updates_per_env_step, **common
        )
    else:
        params = OnPolicyTrainerParams(update_step_num_repetitions=t.update_repetitions, **common)
    try:
        collector.reset()
        with timed_training_collects() as collect_seconds:
            stats = algorithm.run_training(params)
    finally:
        collector.env.close()
    return Timing.of(stats, collect_seconds[0])


# ---------------------------------------------------------------------------------------------
# The comparison


def measure_agents(
    quick: bool,
    seed: int = 0,
    device: str = "cpu",
    same_networks: bool = False,
    env_steps: int | None = None,
) -> dict[str, float]:
    """marlrec `mappo` / `idqn` against stock Tianshou PPO / DQN, in this process, back to back.

    Returns each side's env steps, seconds and rates, the ratios `mappo_vs_tianshou_ppo` and
    `idqn_vs_tianshou_dqn` (marlrec transitions/s per role over stock transitions/s), and the
    settings used. With `same_networks`, also `tianshou_ppo_same_nets` / `tianshou_dqn_same_nets`:
    stock Tianshou PPO and DQN driven by marlrec's candidate-scoring networks on the same
    `DummyVectorEnv` copies (marlrec's single-agent `ppo` and `dqn` agents with
    `trainer.vector_env=dummy`), which separates the networks' cost from the rest.
    `env_steps` replaces the mode's number of env steps.
    """
    sizes = dict(QUICK if quick else FULL)
    if env_steps is not None:
        sizes["env_steps"] = env_steps
    torch.set_num_threads(THREADS)
    logging.getLogger("tianshou").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as cache, threadpool_limits(THREADS):
        pipeline = build_pipeline(seed, sizes["n_users"], sizes["n_items"], Path(cache), device)
        t = trainer_settings(pipeline, sizes["env_steps"])
        warm = trainer_settings(pipeline, WARMUP_ENV_STEPS)
        single = single_agent_env(pipeline)
        hidden = int(pipeline.cfg.agent.hidden)
        n_roles = len(pipeline.env.spec.roles)
        dev = pipeline.device
        runs: dict[str, Callable[[TrainerConfig], Timing]] = {
            "mappo": lambda tc: time_marlrec("mappo", pipeline, tc, seed),
            "tianshou_ppo": lambda tc: time_stock(stock_ppo, single, tc, hidden, dev, seed, False),
            "idqn": lambda tc: time_marlrec("idqn", pipeline, tc, seed),
            "tianshou_dqn": lambda tc: time_stock(stock_dqn, single, tc, hidden, dev, seed, True),
        }
        if same_networks:
            dummy = {"vector_env": "dummy"}
            runs["tianshou_ppo_same_nets"] = lambda tc: time_marlrec(
                "ppo", pipeline, dataclasses.replace(tc, **dummy), seed, single
            )
            runs["tianshou_dqn_same_nets"] = lambda tc: time_marlrec(
                "dqn", pipeline, dataclasses.replace(tc, **dummy), seed, single
            )
        for run in runs.values():  # numba's compilation and first-call costs, untimed
            run(warm)
        timings = {name: run(t) for name, run in runs.items()}

    result: dict[str, float] = {
        "threads": float(torch.get_num_threads()),
        "hidden": float(hidden),
        "batch_size": float(t.batch_size),
        "buffer_size": float(t.buffer_size),
        "num_train_envs": float(t.num_train_envs),
        "collect_num_env_steps": float(t.collect_num_env_steps),
        "updates_per_env_step": float(t.updates_per_env_step),
        "update_repetitions": float(t.update_repetitions),
        "env_steps": float(t.epoch_num_env_steps),
        "n_roles": float(n_roles),
        "n_candidates": float(pipeline.env.spec.layout.n_candidates),
        "n_users": float(sizes["n_users"]),
        "n_items": float(sizes["n_items"]),
    }
    for name, timing in timings.items():
        result[f"{name}_env_steps"] = float(timing.env_steps)
        result[f"{name}_collect_seconds"] = timing.collect_seconds
        result[f"{name}_update_seconds"] = timing.update_seconds
        result[f"{name}_train_seconds"] = timing.train_seconds
        result[f"{name}_env_steps_per_s"] = timing.env_steps_per_s
    for ours, stock in (("mappo", "tianshou_ppo"), ("idqn", "tianshou_dqn")):
        per_role = timings[ours].env_steps_per_s / n_roles
        result[f"{ours}_transitions_per_s_per_role"] = per_role
        result[f"{stock}_transitions_per_s"] = timings[stock].env_steps_per_s
        result[f"{ours}_vs_{stock}"] = per_role / max(timings[stock].env_steps_per_s, 1e-9)
        # The same ratio in env steps, without dividing marlrec's by its number of roles.
        result[f"{ours}_vs_{stock}_env_steps"] = timings[ours].env_steps_per_s / max(
            timings[stock].env_steps_per_s, 1e-9
        )
        same = f"{stock}_same_nets"
        if same in timings:
            result[f"{same}_transitions_per_s"] = timings[same].env_steps_per_s
            result[f"{ours}_vs_{same}"] = per_role / max(timings[same].env_steps_per_s, 1e-9)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2000 env steps instead of 10000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--same-networks",
        action="store_true",
        help="also time stock Tianshou PPO and DQN with marlrec's candidate networks",
    )
    parser.add_argument("--env-steps", type=int, help="env steps per measurement")
    args = parser.parse_args()
    start = time.perf_counter()
    result = measure_agents(args.quick, args.seed, args.device, args.same_networks, args.env_steps)
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:>12.3f}")
    print(f"({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
