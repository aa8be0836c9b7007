"""Per-role transitions and exploration through Tianshou's multi-agent path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tianshou.data import Batch, ReplayBuffer
from tianshou.env import PettingZooEnv
from tianshou.utils.torch_utils import policy_within_training_step

from marlrec.agents.marl import (
    CandidateActor,
    CandidateCritic,
    CandidateQNet,
    SharedOptimizerFactory,
    attach_inputs,
    own_turn_transitions,
)
from marlrec.app import compose_config
from marlrec.pipeline import build
from tests.conftest import SMALL


def _buffer(steps: list[tuple[str, float, bool]]) -> ReplayBuffer:
    """Steps of (acting role, this role's reward column, terminated) in AEC order."""
    buffer = ReplayBuffer(size=32)
    for agent, reward, terminated in steps:
        obs = Batch(agent_id=np.array(agent, dtype=object), obs=np.zeros(2), mask=np.ones(2, bool))
        buffer.add(
            Batch(
                obs=obs,
                act=0,
                rew=reward,
                terminated=terminated,
                truncated=False,
                obs_next=obs,
                info={},
            )
        )
    return buffer


def test_next_turn_is_the_roles_own_and_rewards_between_turns_are_credited() -> None:
    # Two roles fill two-slot slates; each slate's reward lands on the step that completes it
    # (role b's turn), and role a must still be credited with it.
    rewards_a = _buffer(
        [
            ("a", 0, False),
            ("b", 1, False),
            ("a", 0, False),
            ("b", 0, False),
            ("a", 0, False),
            ("b", 2, True),
            ("a", 0, False),
            ("b", 3, False),
        ]
    )
    accrued, next_turn, bootstrap, complete = own_turn_transitions(
        rewards_a, np.array([0, 2, 4, 6]), "a"
    )
    assert accrued.tolist() == [1.0, 0.0, 2.0, 3.0]
    assert next_turn[:2].tolist() == [2, 4]
    assert bootstrap.tolist() == [True, True, False, False]  # episode ended; next not collected
    assert complete.tolist() == [True, True, True, False]


def test_role_b_bootstraps_from_its_own_next_turn() -> None:
    rewards_b = _buffer([("a", 0, False), ("b", 1, False), ("a", 0, False), ("b", 5, True)])
    accrued, next_turn, bootstrap, complete = own_turn_transitions(rewards_b, np.array([1, 3]), "b")
    assert accrued.tolist() == [1.0, 5.0]
    assert next_turn[0] == 3 and rewards_b.obs.agent_id[next_turn[0]] == "b"
    assert bootstrap.tolist() == [True, False] and complete.all()


def test_exploration_reaches_every_role_in_training_only(offline_cache: Path) -> None:
    pipeline = build(compose_config([*SMALL, "agent=idqn"]))  # epsilon-greedy Q-learning
    agent, env = pipeline.agent, pipeline.env
    algorithm = agent._algorithm(PettingZooEnv(env.make()))
    roles = [algorithm.get_algorithm(r).policy for r in env.spec.roles]
    for policy in roles:
        policy.set_eps_training(1.0)
    aec = env.make()
    aec.reset(seed=1)
    obs = aec.observe(aec.agent_selection)
    batch = Batch(
        obs=Batch(
            agent_id=np.array([aec.agent_selection] * 64, dtype=object),
            obs=np.repeat(obs["observation"][None], 64, 0),
            mask=np.repeat(obs["action_mask"][None].astype(bool), 64, 0),
        ),
        info=Batch(),
    )
    greedy = algorithm.policy(batch).act
    assert len(set(greedy.tolist())) == 1  # evaluation: deterministic
    assert not any(p.is_within_training_step for p in roles)
    with policy_within_training_step(algorithm.policy):
        assert all(p.is_within_training_step for p in roles)
        explored = algorithm.policy.add_exploration_noise(greedy.copy(), batch)
    assert len(set(explored.tolist())) > 1  # training: epsilon-greedy, within the mask
    assert obs["action_mask"][explored].all()


def test_one_optimizer_serves_every_role_and_leaves_the_others_be() -> None:
    first, second = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    factory = SharedOptimizerFactory(torch.nn.ModuleList([first, second]), lr=0.1)
    optimizer, _ = factory.create_instances(first)
    assert factory.create_instances(second)[0] is optimizer
    # The second role steps first, so Adam holds momentum for its weights when the first steps.
    for module, other in ((second, first), (first, second)):
        optimizer.zero_grad()
        module(torch.ones(1, 3)).sum().backward()
        before = [p.detach().clone() for p in other.parameters()]
        optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(before, other.parameters(), strict=True))


def test_a_shared_q_network_tells_the_roles_apart(small_pipeline) -> None:
    spec = small_pipeline.env.spec
    net = CandidateQNet(spec, 16, torch.device("cpu"), role_embedding=True, direct_scores=True)
    aec = small_pipeline.env.make()
    aec.reset(seed=2)
    obs = torch.as_tensor(aec.observe(aec.agent_selection)["observation"])[None]
    other = obs.clone()
    role = spec.layout.split(other)["role"]
    role.copy_(role.flip(-1))
    assert not torch.allclose(net(obs)[0], net(other)[0])
    # The direct popularity term starts neutral and, once learned, ranks by popularity.
    assert not net.direct.weight.any()
    with torch.no_grad():
        net.direct.weight.copy_(torch.tensor([[0.0, 100.0]]))
    popularity = spec.layout.split(obs)["popularity"][0]
    assert popularity[net(obs)[0][0].argmax()] == popularity.max()


def test_networks_read_shared_inputs_as_they_read_the_observation(small_pipeline) -> None:
    # A target network (or a critic) handed the inputs another network computed scores the
    # batch exactly as from the observation itself, also once the inputs ride on a Batch
    # that is split and shuffled.
    spec, cpu = small_pipeline.env.spec, torch.device("cpu")
    torch.manual_seed(0)
    online, target = CandidateQNet(spec, 16, cpu), CandidateQNet(spec, 16, cpu)
    actor, critic = CandidateActor(spec, 16, cpu), CandidateCritic(spec, 16, cpu)
    aec = small_pipeline.env.make()
    aec.reset(seed=2)
    flat = []
    for _ in range(3):
        observation = aec.observe(aec.agent_selection)
        flat.append(observation["observation"])
        aec.step(int(np.flatnonzero(observation["action_mask"])[0]))
    obs = np.stack(flat)
    inputs = online.inputs(obs)
    for net in (online, target):
        assert torch.equal(net(inputs)[0], net(obs)[0])
    mask = np.ones((3, spec.layout.n_candidates), bool)
    attached = attach_inputs(Batch(obs=obs, mask=mask), critic)[np.array([2, 0])]
    plain = Batch(obs=obs, mask=mask)[np.array([2, 0])]
    assert "candidate_inputs" in attached.get_keys() and "candidate_inputs" not in plain.get_keys()
    assert torch.equal(actor(attached)[0], actor(plain)[0])
    assert torch.equal(critic(attached), critic(plain))
