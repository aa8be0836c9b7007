"""The shared training loop: episodes cut at epoch ends, saved algorithm state, env copies of
every kind, reward-term tallies, validation with early stopping, and what gets logged."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator
from tianshou.data import Batch, Collector, VectorReplayBuffer
from tianshou.env import DummyVectorEnv, PettingZooEnv
from tianshou.utils.torch_utils import policy_within_training_step
from torch.utils.tensorboard import SummaryWriter

from marlrec.agents.idqn import IDQNConfig, IndependentDQN
from marlrec.evaluation.harness import agent_actor, session_eval, session_plan
from marlrec.pipeline import Pipeline
from marlrec.registry import MarlrecError
from marlrec.report import print_history
from marlrec.run import EVAL_SESSIONS, VALID_SESSIONS, validation_return
from marlrec.settings import LoggerConfig, TrainerConfig, TrainRun
from marlrec.training.checkpoint import algorithm_state, load_algorithm_state
from marlrec.training.imitation import imitate
from marlrec.training.loop import VALID_METRIC, VALID_RETURN, fit, train_with_tianshou
from marlrec.training.vector_envs import (
    TEST_STREAM,
    EnvCopies,
    MarlrecPettingZooEnv,
    close_open_episodes,
    epoch_seeds,
    tianshou_env,
    vector_envs,
)

CPU = torch.device("cpu")


def tiny_trainer(**changes: Any) -> TrainerConfig:
    options: dict[str, Any] = dict(
        max_epochs=2,
        epoch_num_env_steps=32,
        collect_num_env_steps=16,
        batch_size=16,
        buffer_size=400,
        num_train_envs=2,
        test_episodes=1,
        show_progress=False,
    )
    return TrainerConfig(**{**options, **changes})


def tiny_run(tmp_path: Path, trainer: TrainerConfig, **hooks: Any) -> TrainRun:
    return TrainRun(
        trainer=trainer,
        logger=LoggerConfig(interval_env_steps=16),
        seed=0,
        writer=SummaryWriter(str(tmp_path / "tensorboard")),
        save_checkpoint=hooks.pop("save_checkpoint", lambda epoch: None),
        save_best=hooks.pop("save_best", lambda: None),
        **hooks,
    )


def fresh_agent(pipeline: Pipeline) -> IndependentDQN:
    """The same initial weights and exploration draws every time."""
    torch.manual_seed(0)
    np.random.seed(0)
    return IndependentDQN(IDQNConfig(hidden=16), spec=pipeline.env.spec, device=CPU)


def fit_history(pipeline: Pipeline, tmp_path: Path, trainer: TrainerConfig) -> list[dict]:
    run = tiny_run(tmp_path, trainer, validate=lambda: 0.0)
    fit(fresh_agent(pipeline), pipeline.env, run)
    run.writer.close()
    return run.history


# --- the replay buffer at epoch boundaries ------------------------------------------------------


def _step(reward: float, terminated: bool) -> Batch:
    obs = Batch(agent_id=np.array(["a"], dtype=object), obs=np.zeros((1, 2)))
    return Batch(
        obs=obs,
        act=np.zeros(1, int),
        rew=np.array([reward]),
        terminated=np.array([terminated]),
        truncated=np.array([False]),
        obs_next=obs,
        info=np.array([{}], dtype=object),
    )


def test_open_sessions_are_closed_as_truncated_and_returns_restart() -> None:
    buffer = VectorReplayBuffer(20, 2)
    for reward in (1.0, 2.0):  # copy 0 is in mid-session
        buffer.add(_step(reward, False), buffer_ids=[0])
    buffer.add(_step(5.0, True), buffer_ids=[1])  # copy 1 finished its session
    close_open_episodes(buffer)
    last = buffer.last_index[0]
    assert buffer.truncated[last] and buffer.done[last] and not buffer.terminated[last]
    assert not buffer.truncated[buffer.last_index[1]]
    first_of_next = buffer.add(_step(4.0, True), buffer_ids=[0])
    assert buffer.next(last) == last  # no transition crosses into the next session
    assert first_of_next[1][0] == 4.0  # that session's return starts from zero


# --- what a checkpoint restores -----------------------------------------------------------------


def test_algorithm_state_restores_weights_targets_optimisers_and_counters(
    small_pipeline: Pipeline,
) -> None:
    env = small_pipeline.env
    trained = fresh_agent(small_pipeline)._algorithm(tianshou_env(env))
    buffer = VectorReplayBuffer(200, 2)
    collector = Collector(
        trained.policy, DummyVectorEnv([EnvCopies(env)] * 2), buffer, exploration_noise=True
    )
    collector.reset()
    with policy_within_training_step(trained.policy):
        collector.collect(n_step=40)
        for _ in range(3):
            trained.update(buffer, sample_size=16)
    state = pickle.loads(pickle.dumps(algorithm_state(trained)))
    restored = IndependentDQN(IDQNConfig(hidden=16), spec=env.spec, device=CPU)._algorithm(
        tianshou_env(env)
    )
    load_algorithm_state(restored, state)
    for (name, a), (_, b) in zip(
        torch.nn.Module.state_dict(trained).items(),
        torch.nn.Module.state_dict(restored).items(),
        strict=True,
    ):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    role = env.spec.roles[0]
    assert restored.get_algorithm(role)._iter == trained.get_algorithm(role)._iter == 3
    moments = restored.get_algorithm(role).optim.state_dict()["state"]
    expected = trained.get_algorithm(role).optim.state_dict()["state"]
    assert moments and all(
        torch.equal(moments[k]["exp_avg"], expected[k]["exp_avg"]) for k in expected
    )


def test_epoch_seeds_differ_across_epochs_and_streams_and_repeat() -> None:
    assert epoch_seeds(0, 3, 0, 4) == epoch_seeds(0, 3, 0, 4)
    seeds = {s for epoch in range(3) for stream in (0, 1) for s in epoch_seeds(0, epoch, stream, 4)}
    assert len(seeds) == 24


# --- env copies ---------------------------------------------------------------------------------


def test_env_copy_is_a_gym_env_that_tallies_each_slates_reward_terms(
    small_pipeline: Pipeline,
) -> None:
    copy = tianshou_env(small_pipeline.env)
    assert isinstance(copy, gym.Env) and isinstance(copy, PettingZooEnv)
    copy.reset(seed=5)
    rng = np.random.default_rng(0)
    clicks, done = 0, False
    while not done:
        slates = copy.env.unwrapped.slate_number
        mask = np.asarray(copy.env.observe(copy.env.agent_selection)["action_mask"], bool)
        _, _, done, _, info = copy.step(int(rng.choice(np.flatnonzero(mask))))
        if copy.env.unwrapped.slate_number > slates:
            clicks += info["clicks"]
    assert copy.scored_slates == copy.env.unwrapped.slate_number > 1
    assert copy.reward_term_totals == {"click": clicks}


def test_env_copies_survive_pickling_for_worker_processes(small_pipeline: Pipeline) -> None:
    copies = pickle.loads(pickle.dumps(EnvCopies(small_pipeline.env)))
    copy = copies()
    obs, _ = copy.reset(seed=1)
    assert isinstance(copy, MarlrecPettingZooEnv) and obs["obs"].shape[-1] > 0


def test_batched_kind_uses_the_envs_make_vector(small_pipeline: Pipeline, tmp_path: Path) -> None:
    run = tiny_run(tmp_path, tiny_trainer(vector_env="batched", num_train_envs=3, test_episodes=5))
    train, test = vector_envs(small_pipeline.env, run)
    try:
        batched = type(small_pipeline.env.make_vector(1))
        assert train.env_num == 3 and type(train) is batched
        # The test step plays its sessions batched too, one copy each, whatever the train kind.
        assert test.env_num == 5 and type(test) is batched
    finally:
        train.close()
        test.close()


def test_each_epochs_test_return_is_one_seeded_session_per_copy(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    """The logged test return is reproducible, and it is the mean return of one session on each
    of `test_episodes` per-user env copies seeded for the epoch (what the batched copies play)."""
    env, n = small_pipeline.env, 3
    trainer = tiny_trainer(max_epochs=1, test_episodes=n)
    runs, policies = [], []
    for name in ("first", "again"):
        agent = fresh_agent(small_pipeline)
        run = tiny_run(tmp_path / name, trainer, validate=lambda: 0.0)
        plan = agent.training_plan(env, run)
        train_with_tianshou(
            plan.algorithm, env, run, off_policy=plan.off_policy, training_hook=plan.training_hook
        )
        run.writer.close()
        runs.append(run)
        policies.append(plan.algorithm.policy)
    returns = [[r["test_return"] for r in run.history] for run in runs]
    assert returns[0] == returns[1] and len(returns[0]) == 1
    # The trained policy replays the epoch's test sessions on per-user copies, one each.
    reference = DummyVectorEnv([env.tianshou_env] * n)
    reference.seed(epoch_seeds(0, 1, TEST_STREAM, n))
    collector = Collector(policies[0], reference)
    collector.reset_env()
    played = collector.collect(n_episode=n)
    assert played.n_collected_episodes == n
    expected = float(np.mean(played.returns.mean(axis=1)))
    assert returns[0][0] == pytest.approx(expected, rel=1e-5)


def test_unavailable_vector_envs_are_one_line_errors(
    small_pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class WithoutVector:
        ctx = small_pipeline.env.ctx

    run = tiny_run(tmp_path, tiny_trainer(vector_env="batched"))
    with pytest.raises(MarlrecError, match="make_vector"):
        vector_envs(WithoutVector(), run)  # type: ignore[arg-type]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real_find_spec(n, *a)
    )
    with pytest.raises(MarlrecError, match=r"marlrec\[ray\]"):
        vector_envs(small_pipeline.env, tiny_run(tmp_path, tiny_trainer(vector_env="ray")))


def test_subprocess_env_copies_train_exactly_as_in_process_ones(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    dummy = fit_history(small_pipeline, tmp_path / "dummy", tiny_trainer(max_epochs=1))
    subproc = fit_history(
        small_pipeline, tmp_path / "subproc", tiny_trainer(max_epochs=1, vector_env="subproc")
    )
    assert same_history(dummy, subproc) and dummy[0]["env_step"] == 32


def same_history(a: list[dict], b: list[dict]) -> bool:
    """Equal records; losses to float32 rounding (the workers change how many threads the
    learner's matrix products use, hence their summation order)."""
    exact = [{k: v for k, v in r.items() if not k.startswith("loss/")} for r in (*a, *b)]
    losses = [{k: v for k, v in r.items() if k.startswith("loss/")} for r in (*a, *b)]
    n = len(a)
    pairs = zip(losses[:n], losses[n:], strict=False)
    return (
        len(a) == len(b)
        and exact[:n] == exact[n:]
        and all(x == pytest.approx(y, rel=1e-5) for x, y in pairs)
    )


@pytest.fixture
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_env_copies_train_exactly_as_in_process_ones(
    small_pipeline: Pipeline, tmp_path: Path, local_ray: None
) -> None:
    dummy = fit_history(small_pipeline, tmp_path / "dummy", tiny_trainer(max_epochs=1))
    on_ray = fit_history(
        small_pipeline, tmp_path / "ray", tiny_trainer(max_epochs=1, vector_env="ray")
    )
    assert same_history(dummy, on_ray)


# --- validation, early stopping and logs --------------------------------------------------------


def test_validation_keeps_the_best_stops_early_and_everything_is_logged(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    scores = iter([0.3, 0.2, 0.1, 0.5, 0.6])
    best_saves: list[int] = []
    epochs_saved: list[int] = []
    trainer = tiny_trainer(max_epochs=5, patience=2, autocast_bf16=True)
    run = tiny_run(
        tmp_path,
        trainer,
        validate=lambda: next(scores),
        save_best=lambda: best_saves.append(len(epochs_saved) + 1),
        save_checkpoint=epochs_saved.append,
        state_path=tmp_path / "train_state.pt",
    )
    summary = fit(fresh_agent(small_pipeline), small_pipeline.env, run)
    run.writer.close()
    # Epoch 1 is the best; two validations without a better one stop training after epoch 3.
    assert [r["epoch"] for r in run.history] == epochs_saved == [1, 2, 3]
    assert [r[VALID_METRIC] for r in run.history] == [0.3, 0.2, 0.1]
    assert best_saves == [1]
    assert summary["stopped_early"] == 1.0 and summary["best_valid_epoch"] == 1.0
    assert (tmp_path / "train_state.pt").is_file()
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.scalars.Keys())
    assert {VALID_METRIC, "train/reward/click", "test/returns_stat/mean"} <= tags
    for role in small_pipeline.env.spec.roles:
        assert any(role in tag and "loss" in tag for tag in tags), role
    losses = [e.value for tag in tags if "loss" in tag for e in accumulator.Scalars(tag)]
    assert losses and all(np.isfinite(losses))


def test_validation_every_few_epochs_includes_the_last(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    run = tiny_run(tmp_path, tiny_trainer(max_epochs=3, eval_every_epochs=2), validate=lambda: 0.1)
    fit(fresh_agent(small_pipeline), small_pipeline.env, run)
    run.writer.close()
    assert [VALID_METRIC in r for r in run.history] == [False, True, True]


def test_selection_by_return_keeps_the_best_return_within_the_ndcg_floor(
    small_pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # (NDCG@10, return) per epoch; the floor is 0.9 x the highest NDCG@10 so far.
    figures = iter([(0.50, 3.0), (0.46, 3.5), (0.40, 9.0), (0.47, 3.2), (0.60, 2.0), (0.55, 2.5)])
    current: list[tuple[float, float]] = []

    def validate() -> float:
        current[:] = [next(figures)]
        return current[0][0]

    saved_at: list[int] = []  # the epoch being validated: its record follows the validation
    trainer = tiny_trainer(max_epochs=6, select="return", select_tolerance=0.1)
    run = tiny_run(tmp_path, trainer, validate=validate, validate_return=lambda: current[0][1])
    run.save_best = lambda: saved_at.append(len(run.history) + 1)
    summary = fit(fresh_agent(small_pipeline), small_pipeline.env, run)
    run.writer.close()
    assert [r[VALID_RETURN] for r in run.history] == [3.0, 3.5, 9.0, 3.2, 2.0, 2.5]
    # 2: more return within the floor; 3: below it (0.40 < 0.45); 4: less return than 2;
    # 5: a new highest NDCG@10 leaves 2 below the floor (0.46 < 0.54); 6: more return than 5.
    assert saved_at == [1, 2, 5, 6]
    assert summary["best_valid_epoch"] == 6.0
    assert summary["best_valid_NDCG@10"] == 0.55 and summary["best_valid_return"] == 2.5
    print_history(run.history, 6)
    printed = capsys.readouterr().out
    assert "0.5500 *" in printed and "0.6000 *" not in printed and "2.500" in printed


def test_selection_by_ndcg_plays_no_validation_sessions(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    def no_sessions() -> float:
        raise AssertionError("validation sessions played under select=ndcg")

    run = tiny_run(tmp_path, tiny_trainer(), validate=lambda: 0.1, validate_return=no_sessions)
    fit(fresh_agent(small_pipeline), small_pipeline.env, run)
    run.writer.close()
    assert all(VALID_RETURN not in record for record in run.history)


def test_validation_sessions_are_the_same_every_time_and_not_the_evaluations(
    small_pipeline: Pipeline,
) -> None:
    assert validation_return(small_pipeline) is None  # select=ndcg: no sessions to play
    trainer = dataclasses.replace(small_pipeline.trainer, select="return", valid_sessions=12)
    pipeline = dataclasses.replace(small_pipeline, trainer=trainer)
    validate_return = validation_return(pipeline)
    assert validate_return is not None
    actor = agent_actor(pipeline.env, pipeline.agent)
    seed = int(pipeline.cfg.seed)
    played = session_eval(pipeline.env, actor, 12, seed + VALID_SESSIONS)
    assert validate_return() == validate_return() == pytest.approx(played["mean_return"])
    assert VALID_SESSIONS != EVAL_SESSIONS
    assert not np.array_equal(
        session_plan(pipeline.env, 12, seed + VALID_SESSIONS),
        session_plan(pipeline.env, 12, seed + EVAL_SESSIONS),
    )


def test_select_tolerance_must_be_a_fraction() -> None:
    with pytest.raises(MarlrecError, match="select_tolerance"):
        TrainerConfig(select="return", select_tolerance=1.5)


# --- epoch 0: the policy right after imitation --------------------------------------------------


def imitate_then_fit(
    pipeline: Pipeline, tmp_path: Path, trainer: TrainerConfig, scores: list[float]
) -> tuple[TrainRun, dict[str, float], dict[str, dict[str, torch.Tensor]]]:
    """Imitation, then RL whose validations score `scores` in turn; the run, its summary and
    the scoring network's weights after imitation, at each best save and at the end."""
    agent = fresh_agent(pipeline)
    network = agent.scoring_network(0)
    weights: dict[str, dict[str, torch.Tensor]] = {}
    best: list[dict[str, torch.Tensor]] = []
    validations = iter(scores)
    run = tiny_run(
        tmp_path,
        trainer,
        validate=lambda: next(validations),
        save_best=lambda: best.append(copy.deepcopy(network.state_dict())),
    )
    imitate(agent, pipeline.env, run)
    weights["imitated"] = copy.deepcopy(network.state_dict())
    summary = fit(agent, pipeline.env, run)
    run.writer.close()
    weights["last"] = network.state_dict()
    if best:
        weights["best"] = best[-1]
    return run, summary, weights


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_policy_after_imitation_is_epoch_0_and_can_stay_the_best(
    small_pipeline: Pipeline,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trainer = tiny_trainer(max_epochs=5, patience=2, imitation_steps=3)
    with caplog.at_level(logging.INFO, logger="marlrec.training.loop"):
        run, summary, weights = imitate_then_fit(
            small_pipeline, tmp_path, trainer, [0.5, 0.3, 0.2, 0.6, 0.7]
        )
    # Every RL epoch validates below imitation: two of them use up the patience.
    assert [r["epoch"] for r in run.history] == [0, 1, 2]
    assert [r[VALID_METRIC] for r in run.history] == [0.5, 0.3, 0.2]
    assert run.history[0] == {"epoch": 0, "env_step": 0, VALID_METRIC: 0.5}
    assert summary["best_valid_epoch"] == 0.0 and summary["best_valid_NDCG@10"] == 0.5
    assert summary["epochs"] == 2.0 and summary["stopped_early"] == 1.0
    # The best checkpoint holds what imitation taught, which RL went on to change.
    assert same_weights(weights["best"], weights["imitated"])
    assert not same_weights(weights["last"], weights["imitated"])
    assert "best 0.5000 at epoch 0 (after imitation)" in caplog.text
    assert "epoch 0 (after imitation), 0 env steps" in caplog.text
    print_history(run.history, 0)
    assert "0 (after imitation)" in capsys.readouterr().out


def test_rl_epochs_that_validate_better_replace_epoch_0(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    trainer = tiny_trainer(max_epochs=2, imitation_steps=3)
    run, summary, weights = imitate_then_fit(small_pipeline, tmp_path, trainer, [0.1, 0.2, 0.3])
    assert [r[VALID_METRIC] for r in run.history] == [0.1, 0.2, 0.3]
    assert summary["best_valid_epoch"] == 2.0 and summary["epochs"] == 2.0
    assert same_weights(weights["best"], weights["last"])


@pytest.mark.parametrize(
    "changes",
    [
        {"validate_after_imitation": False, "imitation_steps": 3},
        {"validate_after_imitation": True, "imitation_steps": 0},
        {"validate_after_imitation": True, "imitation_steps": 3, "eval_every_epochs": 0},
    ],
    ids=["option off", "no imitation", "no validation"],
)
def test_no_epoch_0_when_off_without_imitation_or_without_validation(
    small_pipeline: Pipeline, tmp_path: Path, changes: dict[str, Any]
) -> None:
    trainer = tiny_trainer(max_epochs=2, **changes)
    run, summary, _ = imitate_then_fit(small_pipeline, tmp_path, trainer, [0.5, 0.3])
    assert [r["epoch"] for r in run.history] == [1, 2]
    assert summary["epochs"] == 2.0
    if trainer.eval_every_epochs:
        assert [r[VALID_METRIC] for r in run.history] == [0.5, 0.3]
        assert summary["best_valid_epoch"] == 1.0
    else:
        assert "best_valid_epoch" not in summary
