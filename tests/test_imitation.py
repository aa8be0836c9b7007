"""Imitation of logged choices, and every agent plugin beating random and pop on return."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from marlrec import threads
from marlrec.envs import LoggedChoices
from marlrec.envs.logged import LoggedLog
from marlrec.evaluation.harness import agent_actor, baseline_actor, session_eval
from marlrec.pipeline import Pipeline, build
from marlrec.registry import PluginError
from marlrec.settings import TrainerConfig, TrainRun
from marlrec.training.anchor import ImitationAnchor
from marlrec.training.imitation import (
    EnvLog,
    imitate,
    imitation_loss,
    logged_pairs,
    logged_positions,
    logged_source,
)
from marlrec.training.loop import fit
from tests.conftest import SMALL, compose_config

# Enough users for the logs to teach item affinities (the SMALL default has 120).
# Content retrieval and imitation before RL only: the configuration the README's per-agent
# returns were measured on (the defaults choose EASE candidates and imitate during RL too).
LEARNING = [
    *SMALL,
    "data.n_users=600",
    "trainer.imitation_steps=500",
    "retrieval=content",
    "trainer.imitation_steps_per_update=0",
]
# Every policy meets the same users in the same order (seeded sessions), so the comparisons are
# paired; one standard error of a single mean return is about 0.14.
SESSIONS = 300


def logged_batch(pipeline: Pipeline, n: int, seed: int = 0) -> tuple[list, np.ndarray]:
    histories = pipeline.data.train_histories
    users, positions = logged_positions(histories)
    drawn = np.random.default_rng(seed).integers(0, len(users), n)
    return logged_pairs(histories, users[drawn], positions[drawn])


def run_for(pipeline: Pipeline, tmp_path: Path) -> TrainRun:
    return TrainRun(
        trainer=pipeline.trainer,
        logger=pipeline.logger,
        seed=0,
        writer=SummaryWriter(str(tmp_path)),
        save_checkpoint=lambda epoch: None,
        save_best=lambda: None,
    )


def test_logged_positions_cover_every_item_after_the_first() -> None:
    users, positions = logged_positions([np.array([4, 5, 6]), np.array([7]), np.array([8, 9])])
    assert users.tolist() == [0, 0, 2]
    assert positions.tolist() == [1, 2, 1]


def test_logged_choices_show_the_logged_item_at_a_random_turn(small_pipeline: Pipeline) -> None:
    env, layout = small_pipeline.env, small_pipeline.env.spec.layout
    histories, targets = logged_batch(small_pipeline, 400)
    batch = env.logged_choices(histories, targets, np.random.default_rng(0))
    parts = layout.split(batch.obs)
    rows = torch.arange(len(batch.rows))
    # The logged item is the candidate at `actions`, open, and never in the history shown.
    assert torch.equal(
        parts["candidates"][rows, batch.actions], torch.as_tensor(targets)[batch.rows]
    )
    assert (parts["chosen"][rows, batch.actions] == 0).all()
    for n, row in enumerate(batch.rows.tolist()):
        assert targets[row] not in histories[row]
        assert set(parts["history"][n][parts["history"][n] >= 0].tolist()) <= set(histories[row])
    # The turn: as many earlier picks as the slot number, by the role whose turn it is.
    slots = (parts["progress"][:, 0] * env.core.slate_size).round().long()
    assert torch.equal(parts["chosen"].sum(dim=1).long(), slots)
    assert torch.equal(batch.roles, torch.as_tensor(env.core.turn_order)[slots])
    assert torch.equal(parts["role"].argmax(dim=1), batch.roles)
    assert set(slots.tolist()) == set(range(env.core.slate_size))
    # Histories whose logged item was not retrieved are left out, the others all kept.
    assert 0 < len(batch.rows) < len(histories)


def assert_same_choices(got: LoggedChoices, expected: LoggedChoices) -> None:
    assert torch.equal(got.rows, expected.rows)
    assert torch.equal(got.roles, expected.roles)
    assert torch.equal(got.actions, expected.actions)
    torch.testing.assert_close(got.obs, expected.obs)


# The union's members give each candidate's scores and ranks as observation features.
UNION_FEATURES = [
    "retrieval=union",
    "retrieval.members=[{name:ease},{name:content}]",
    "retrieval.features=true",
]


@pytest.mark.parametrize("retrieval", [["retrieval=content"], ["retrieval=ease"], UNION_FEATURES])
@pytest.mark.parametrize("cache_mb", [1024, 0])
def test_the_packed_log_gives_the_choices_of_the_histories_it_draws(
    retrieval: list[str], cache_mb: int
) -> None:
    pipeline = build(compose_config([*SMALL, *retrieval]))
    env, histories = pipeline.env, pipeline.data.train_histories
    packed = logged_source(env, histories, cache_mb)
    reference = EnvLog(env, histories)
    assert isinstance(packed, LoggedLog) and len(packed) == len(reference)
    # Precomputed within the budget; with none, retrieved at every step.
    assert (packed.precomputed is not None) == (cache_mb > 0)
    draws = np.random.default_rng(3)
    for n in (300, 300, 600, 5):
        drawn = draws.integers(0, len(packed), n)
        got = packed.choices(drawn, np.random.default_rng(n))
        assert_same_choices(got, reference.choices(drawn, np.random.default_rng(n)))


def test_a_log_over_its_memory_budget_is_retrieved_at_every_step() -> None:
    pipeline = build(compose_config(SMALL))
    packed = logged_source(pipeline.env, pipeline.data.train_histories, 1024)
    assert isinstance(packed, LoggedLog) and packed.precomputed is not None
    assert packed.precomputed.nbytes > 2**20  # so that a 1 MB budget cannot hold it
    over = logged_source(pipeline.env, pipeline.data.train_histories, 1)
    assert isinstance(over, LoggedLog) and over.precomputed is None
    assert "trainer.imitation_cache_mb=1 MB" in over.path


class ScalarLog:
    """Records what imitation writes to TensorBoard."""

    def __init__(self) -> None:
        self.points: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.points.append((tag, value, step))


def test_imitation_learns_the_same_with_and_without_the_precomputed_log(tmp_path: Path) -> None:
    """Precomputing the logged positions changes how fast a step is, never what it learns:
    the same seed draws the same batches, so the losses and the networks are identical."""
    trained = []
    for cache_mb in (1024, 0):
        config = [*SMALL, "trainer.imitation_steps=101", f"trainer.imitation_cache_mb={cache_mb}"]
        pipeline = build(compose_config(config))
        run = run_for(pipeline, tmp_path)
        run.writer = ScalarLog()  # type: ignore[assignment]
        summary = imitate(pipeline.agent, pipeline.env, run)
        trained.append((run.writer.points, summary, pipeline.agent.scoring_network(0)))
    (points, summary, network), (points_0, summary_0, network_0) = trained
    assert [step for _, _, step in points] == [0, 0, 50, 50, 100, 100]
    assert points == points_0
    assert summary["imitation_loss"] == summary_0["imitation_loss"]
    assert summary["imitation_retrieved"] == summary_0["imitation_retrieved"]
    reference = network_0.state_dict()
    for key, value in network.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_imitation_teaches_each_role_the_logged_choices(tmp_path: Path) -> None:
    pipeline = build(compose_config([*LEARNING, "agent=ippo", "trainer.imitation_steps=300"]))
    histories, targets = logged_batch(pipeline, 2000, seed=1)
    held = pipeline.env.logged_choices(histories, targets, np.random.default_rng(1))
    before, _ = imitation_loss(pipeline.agent, held)
    summary = imitate(pipeline.agent, pipeline.env, run_for(pipeline, tmp_path))
    after, accuracy = imitation_loss(pipeline.agent, held)
    assert after < before - 0.1
    assert accuracy > 1.5 / pipeline.env.spec.layout.n_candidates
    assert 0 < summary["imitation_retrieved"] < 1


def test_imitation_during_rl_teaches_and_resumes_the_same_batches(tmp_path: Path) -> None:
    pipeline = build(compose_config([*LEARNING, "agent=ippo"]))
    histories, targets = logged_batch(pipeline, 2000, seed=1)
    held = pipeline.env.logged_choices(histories, targets, np.random.default_rng(1))
    before, _ = imitation_loss(pipeline.agent, held)
    run = run_for(pipeline, tmp_path)
    anchor = ImitationAnchor(pipeline.agent, pipeline.env, run)
    anchor.step(150)
    assert imitation_loss(pipeline.agent, held)[0] < before - 0.1
    # A second anchor restored from the first's state goes on with the same draws.
    saved = copy.deepcopy(anchor.state_dict())
    restored = ImitationAnchor(pipeline.agent, pipeline.env, run)
    restored.load_state_dict(saved)
    network = pipeline.agent.scoring_network(0)
    start = copy.deepcopy(network.state_dict())
    anchor.step(3)
    after_first = copy.deepcopy(network.state_dict())
    network.load_state_dict(start)
    restored.step(3)
    for key, value in network.state_dict().items():
        assert torch.equal(value, after_first[key]), key
    assert restored.steps == anchor.steps == 153


def test_no_rl_epochs_keep_what_imitation_taught(tmp_path: Path) -> None:
    """`trainer.max_epochs=0`: the imitation-only row; the networks are left as they are."""
    pipeline = build(compose_config([*SMALL, "trainer.max_epochs=0", "trainer.imitation_steps=5"]))
    saved: list[int] = []
    run = run_for(pipeline, tmp_path)
    run.save_checkpoint = saved.append
    imitate(pipeline.agent, pipeline.env, run)
    network = pipeline.agent.scoring_network(0)
    before = copy.deepcopy(network.state_dict())
    assert fit(pipeline.agent, pipeline.env, run) == {} and saved == [0]
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_imitation_settings_are_checked() -> None:
    with pytest.raises(PluginError, match=r"trainer\.imitation_steps must be 0 or more"):
        TrainerConfig(imitation_steps=-1)
    with pytest.raises(PluginError, match=r"trainer\.imitation_lr must be positive"):
        TrainerConfig(imitation_lr=0.0)


# Baseline returns per env kind, measured once: every agent is compared with the same figures.
BASELINE_RETURNS: dict[str, dict[str, float]] = {}


def baseline_returns(pipeline: Pipeline, env_kind: str) -> dict[str, float]:
    if env_kind not in BASELINE_RETURNS:
        env = pipeline.env
        BASELINE_RETURNS[env_kind] = {
            name: session_eval(
                env, baseline_actor(env, pipeline.baselines[name]), SESSIONS, 20_000
            )["mean_return"]
            for name in ("random", "pop")
        }
    return BASELINE_RETURNS[env_kind]


@pytest.mark.parametrize(
    ("env_kind", "agent"),
    [
        ("slate", "idqn"),
        ("slate", "ippo"),
        ("slate", "mappo"),
        # The single-agent ablations learn as the slate agents do (tests/test_single_agents.py
        # checks they beat random); these two full runs are about a minute of CI, so on purpose.
        pytest.param("single", "dqn", marks=pytest.mark.slow),
        pytest.param("single", "ppo", marks=pytest.mark.slow),
    ],
)
def test_every_agent_beats_random_and_pop_on_return(
    env_kind: str, agent: str, tmp_path: Path
) -> None:
    """Imitation, then reinforcement learning, as `marlrec train` runs them."""
    pipeline = build(compose_config([*LEARNING, f"env={env_kind}", f"agent={agent}"]))
    torch.manual_seed(0)
    run = run_for(pipeline, tmp_path)
    imitate(pipeline.agent, pipeline.env, run)
    fit(pipeline.agent, pipeline.env, run)
    returns = baseline_returns(pipeline, env_kind)
    actor = agent_actor(pipeline.env, pipeline.agent)
    trained = session_eval(pipeline.env, actor, SESSIONS, 20_000)["mean_return"]
    print(f"{agent} return {trained:.3f}; pop {returns['pop']:.3f}, random {returns['random']:.3f}")
    assert trained > returns["pop"] > returns["random"]


def test_a_job_started_during_imitation_gets_its_share_of_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cores = threads.available_cores()
    if cores < 2:
        pytest.skip("one core: every job gets it whole")
    monkeypatch.setenv(threads.REGISTRY_ENV, str(tmp_path / "jobs"))
    threads.register_job()
    before = torch.get_num_threads()
    pipeline = build(compose_config([*SMALL, "trainer.imitation_steps=60"]))
    run = run_for(pipeline, tmp_path)
    threads.fit_threads(pipeline.trainer.threads)  # alone: every core
    assert torch.get_num_threads() == cores

    class JobStartsAtStepZero(ScalarLog):
        def add_scalar(self, tag: str, value: float, step: int) -> None:
            (tmp_path / "jobs" / f"{os.getppid()}.job").touch()  # a live process
            super().add_scalar(tag, value, step)

    run.writer = JobStartsAtStepZero()  # type: ignore[assignment]
    try:
        imitate(pipeline.agent, pipeline.env, run)
        assert torch.get_num_threads() == cores // 2
    finally:
        torch.set_num_threads(before)
