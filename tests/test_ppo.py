"""`ippo`: own-turn advantages, sampling in training only, masks, sharing, learning, checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch, ReplayBuffer
from tianshou.utils.torch_utils import policy_within_training_step
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from marlrec.agents.marl import (
    CooperativeOnPolicyAlgorithm,
    multi_agent_env,
    own_turn_advantages,
)
from marlrec.agents.ppo import IndependentPPO, PPOConfig, RolePPO
from marlrec.evaluation.harness import agent_actor, baseline_actor, session_eval
from marlrec.pipeline import Pipeline
from marlrec.settings import TrainRun
from marlrec.training.loop import fit

GAMMA, LAMBDA = 0.9, 0.5


class ValueInObservation(nn.Module):
    """A critic whose value is the observation's first entry, so targets can be worked by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, obs: Batch, state: Any = None, info: Any = None) -> torch.Tensor:
        return torch.as_tensor(obs.obs[:, :1], dtype=torch.float32)


class UniformActor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(2))

    def forward(self, obs: Batch, state: Any = None, info: Any = None) -> tuple[torch.Tensor, Any]:
        return self.logits.expand(len(obs.obs), 2), state


def aec_buffer(
    steps: list[tuple[str, tuple[float, float], bool, float]], truncated_at: int = -1
) -> ReplayBuffer:
    """AEC steps of (acting role, rewards of roles a and b, terminated, the step's value)."""
    buffer = ReplayBuffer(size=32)
    for step, (agent, rewards, terminated, value) in enumerate(steps):
        obs = Batch(
            agent_id=np.array(agent, dtype=object),
            obs=np.array([value, 0.0]),
            mask=np.ones(2, dtype=bool),
        )
        buffer.add(
            Batch(
                obs=obs,
                act=0,
                rew=np.array(rewards),
                terminated=terminated,
                truncated=step == truncated_at,
                obs_next=obs,
                info={},
            )
        )
    return buffer


def two_role_algorithm(
    algorithm_cls: type[CooperativeOnPolicyAlgorithm] = CooperativeOnPolicyAlgorithm,
    role_cls: type[RolePPO] = RolePPO,
    **role_kwargs: Any,
) -> CooperativeOnPolicyAlgorithm:
    roles = [
        role_cls(
            agent_id=role,
            policy=DiscreteActorPolicy(actor=UniformActor(), action_space=spaces.Discrete(2)),
            critic=ValueInObservation(),
            optim=AdamOptimizerFactory(lr=1e-3),
            gamma=GAMMA,
            gae_lambda=LAMBDA,
            **role_kwargs,
        )
        for role in ("a", "b")
    ]
    # Tianshou's dispatcher reads only the role names and their reward columns from the env.
    env: Any = SimpleNamespace(agents=["a", "b"], agent_idx={"a": 0, "b": 1})
    return algorithm_cls(algorithms=roles, env=env)


# Two-slot slates (a then b); each slate's reward lands on b's step, which completes it. The
# last two steps belong to a session still running when collection paused.
STEPS = [
    ("a", (0, 0), False, 0.5),
    ("b", (1, 1), False, 0.2),
    ("a", (0, 0), False, 1.0),
    ("b", (0, 0), False, 0.4),
    ("a", (0, 0), False, 0.25),
    ("b", (2, 2), True, 0.1),
    ("a", (0, 0), False, 3.0),
    ("b", (5, 5), False, 3.0),
]


def test_each_role_learns_from_its_own_next_turn_with_every_reward_in_between() -> None:
    buffer = aec_buffer(STEPS)
    batch, indices = buffer.sample(0)
    processed = two_role_algorithm()._preprocess_batch(batch, buffer, indices)
    # Role a: rewards 1, 0, 2 accrue until its next turns; its values are 0.5, 1.0, 0.25.
    # deltas: 1 + .9 * 1 - .5 = 1.4, 0 + .9 * .25 - 1 = -.775, 2 - .25 = 1.75 (session ends);
    # advantages chain back with gamma * lambda = .45 along a's own turns only.
    a = processed["a"]
    assert a.adv.tolist() == pytest.approx([1.405625, 0.0125, 1.75])
    assert a.returns.tolist() == pytest.approx([1.905625, 1.0125, 2.0])
    # Role b (values .2, .4, .1) is credited with the same slate rewards through its turns.
    b = processed["b"]
    assert b.adv.tolist() == pytest.approx([1.40525, 0.545, 1.9])
    assert b.returns.tolist() == pytest.approx([1.60525, 0.945, 2.0])
    # Steps whose next own turn is not collected yet (indices 6, 7) are left out.
    assert len(a.adv) == len(b.adv) == 3


def test_a_session_cut_short_gives_no_return_to_the_turns_it_cut() -> None:
    # The env copies restarted after step 3: a's turn at 2 and b's at 3 have no next turn.
    buffer = aec_buffer(STEPS[:4], truncated_at=3)
    batch, indices = buffer.sample(0)
    processed = two_role_algorithm()._preprocess_batch(batch, buffer, indices)
    assert processed["a"].returns.tolist() == pytest.approx([1 + GAMMA * 1.0])
    assert len(processed["b"].returns) == 1


def test_advantages_chain_only_through_the_same_episode() -> None:
    deltas = np.array([1.0, 2.0, 4.0])
    # Step 5 bootstraps from step 9; step 9's episode ended; step 12's next turn is elsewhere.
    indices = np.array([5, 9, 12])
    advantages = own_turn_advantages(
        deltas, indices, np.array([9, 9, 20]), np.array([True, False, True]), 0.25
    )
    assert advantages.tolist() == [1.5, 2.0, 4.0]


def test_a_role_without_complete_transitions_is_skipped() -> None:
    buffer = aec_buffer([("a", (0, 0), False, 1.0), ("b", (0, 0), False, 1.0)])
    batch, indices = buffer.sample(0)
    processed = two_role_algorithm()._preprocess_batch(batch, buffer, indices)
    assert not processed["a"].get_keys() and not processed["b"].get_keys()


def observation_batch(pipeline: Pipeline, copies: int) -> tuple[Batch, np.ndarray]:
    aec = pipeline.env.make()
    aec.reset(seed=3)
    aec.step(int(np.flatnonzero(aec.observe(aec.agent_selection)["action_mask"])[0]))
    observation = aec.observe(aec.agent_selection)
    mask = np.repeat(observation["action_mask"][None].astype(bool), copies, 0)
    batch = Batch(
        obs=Batch(
            agent_id=np.array([aec.agent_selection] * copies, dtype=object),
            obs=np.repeat(observation["observation"][None], copies, 0),
            mask=mask,
        ),
        info=Batch(),
    )
    return batch, mask[0]


@pytest.mark.parametrize("share", [False, True])
def test_roles_sample_within_the_mask_in_training_and_act_greedily_otherwise(
    small_pipeline: Pipeline, share: bool
) -> None:
    env = small_pipeline.env
    agent = IndependentPPO(PPOConfig(share=share), spec=env.spec, device=torch.device("cpu"))
    algorithm = agent._algorithm(multi_agent_env(env, "ippo"))
    roles = [algorithm.get_algorithm(r).policy for r in env.spec.roles]
    batch, mask = observation_batch(small_pipeline, 256)
    greedy = algorithm.policy(batch).act
    assert not any(p.is_within_training_step for p in roles)
    assert len(set(greedy.tolist())) == 1 and mask[greedy[0]]
    logits = agent.candidate_scores(torch.as_tensor(batch.obs.obs[:1]), 1)[0]
    assert greedy[0] == int(logits.masked_fill(~torch.as_tensor(mask), -torch.inf).argmax())
    with policy_within_training_step(algorithm.policy):
        assert all(p.is_within_training_step for p in roles)
        sampled = algorithm.policy(batch).act
    assert len(set(sampled.tolist())) > 1  # training: sampled from the policy
    assert mask[sampled].all()  # never a chosen or unavailable candidate


def test_shared_roles_use_one_network_with_a_role_embedding(small_pipeline: Pipeline) -> None:
    spec = small_pipeline.env.spec
    agent = IndependentPPO(PPOConfig(share=True), spec=spec, device=torch.device("cpu"))
    assert len(agent.actors) == len(agent.critics) == 1
    assert agent.actor(0) is agent.actor(1) and agent.critic(0) is agent.critic(1)
    assert agent.actor(0).role_embedding is not None
    batch, _ = observation_batch(small_pipeline, 1)
    obs = torch.as_tensor(batch.obs.obs)
    as_other_role = obs.clone()
    role = spec.layout.split(as_other_role)["role"]
    role.copy_(role.flip(-1))  # the same state seen by the other role
    assert not torch.allclose(
        agent.candidate_scores(obs, 0), agent.candidate_scores(as_other_role, 0)
    )


def train_agent(
    pipeline: Pipeline, agent: Any, tmp_path: Path, env: Any = None, **trainer: Any
) -> dict[str, float]:
    """Train `agent` on `env` (the pipeline's by default) with the pipeline's trainer settings."""
    writer = SummaryWriter(str(tmp_path))
    run = TrainRun(
        trainer=replace(pipeline.trainer, **trainer),
        logger=pipeline.logger,
        seed=0,
        writer=writer,
        save_checkpoint=lambda epoch: None,
        save_best=lambda: None,
    )
    try:
        return fit(agent, env or pipeline.env, run)
    finally:
        writer.close()


def mean_return(pipeline: Pipeline, agent: Any, sessions: int = 150) -> float:
    return session_eval(pipeline.env, agent_actor(pipeline.env, agent), sessions, 20_000)[
        "mean_return"
    ]


def test_ippo_beats_random_and_restores_from_its_state_dict(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    spec, cpu = small_pipeline.env.spec, torch.device("cpu")
    torch.manual_seed(0)
    agent = IndependentPPO(PPOConfig(), spec=spec, device=cpu)
    summary = train_agent(small_pipeline, agent, tmp_path)
    assert summary["train_env_steps"] >= small_pipeline.trainer.epoch_num_env_steps
    random = session_eval(
        small_pipeline.env,
        baseline_actor(small_pipeline.env, small_pipeline.baselines["random"]),
        150,
        20_000,
    )["mean_return"]
    trained = mean_return(small_pipeline, agent)
    assert trained > random
    restored = IndependentPPO(PPOConfig(), spec=spec, device=cpu)
    restored.load_state_dict(agent.state_dict())
    batch, _ = observation_batch(small_pipeline, 1)
    obs = torch.as_tensor(batch.obs.obs)
    assert torch.equal(restored.candidate_scores(obs, 1), agent.candidate_scores(obs, 1))
