"""`mappo`: the centralised critic's slate, the team reward, decentralised actors, learning."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from tianshou.data import Batch, ReplayBuffer
from tianshou.utils.torch_utils import policy_within_training_step

from marlrec.agents.mappo import (
    MAPPO,
    MAPPOConfig,
    SlateCritic,
    TeamRewardOnPolicyAlgorithm,
    slate_so_far,
)
from marlrec.agents.marl import multi_agent_env
from marlrec.envs import ObsLayout
from marlrec.evaluation.harness import baseline_actor, session_eval
from marlrec.pipeline import Pipeline
from marlrec.registry import PluginError
from tests.test_ppo import (
    aec_buffer,
    mean_return,
    observation_batch,
    train_agent,
    two_role_algorithm,
)

LAYOUT = ObsLayout(state_dim=1, n_candidates=4, n_roles=2)


def _slate_buffer(steps: list[tuple[str, list[int], int]]) -> ReplayBuffer:
    """Steps of (acting role, candidates chosen before it in this slate, its action)."""
    buffer = ReplayBuffer(size=16)
    for agent, chosen, action in steps:
        obs = torch.zeros(LAYOUT.size)
        LAYOUT.split(obs[None])["chosen"][0, chosen] = 1.0
        observation = Batch(
            agent_id=np.array(agent, dtype=object), obs=obs.numpy(), mask=np.ones(4, bool)
        )
        buffer.add(
            Batch(
                obs=observation,
                act=action,
                rew=np.zeros(2),
                terminated=False,
                truncated=False,
                obs_next=observation,
                info={},
            )
        )
    return buffer


def test_the_critic_sees_who_placed_each_candidate_and_where() -> None:
    # Three-slot slates filled by a, b, a; the fourth step starts the next slate.
    buffer = _slate_buffer([("a", [], 2), ("b", [2], 0), ("a", [0, 2], 3), ("a", [], 1)])
    slate = slate_so_far(buffer, np.array([2, 3, 0]), ("a", "b"), LAYOUT)
    by_a, by_b, position = slate[0, :, 0], slate[0, :, 1], slate[0, :, 2]
    assert by_a.tolist() == [0, 0, 1, 0] and by_b.tolist() == [1, 0, 0, 0]
    # Candidate 2 filled slot 0 and candidate 0 slot 1: weights 1 / log2(slot + 2).
    assert position.tolist() == pytest.approx([1 / np.log2(3), 0, 1, 0])
    assert not slate[1].any() and not slate[2].any()  # a new slate, and the first step


def test_steps_collected_before_the_buffer_started_stay_unknown() -> None:
    # The buffer was emptied after candidate 2 had been placed: only b's own pick is known.
    buffer = _slate_buffer([("b", [2], 0), ("a", [0, 2], 3)])
    slate = slate_so_far(buffer, np.array([1]), ("a", "b"), LAYOUT)
    assert slate[0, :, 1].tolist() == [1, 0, 0, 0] and not slate[0, :, 0].any()


def test_every_role_learns_from_the_team_reward() -> None:
    # The roles' own reward columns differ (role terms mixed in); MAPPO uses their mean.
    buffer = aec_buffer(
        [
            ("a", (0, 0), False, 0.0),
            ("b", (2, 0), False, 0.0),
            ("a", (0, 0), False, 0.0),
            ("b", (4, 2), True, 0.0),
        ]
    )
    own_columns = buffer.rew.copy()
    batch, indices = buffer.sample(0)
    algorithm = two_role_algorithm(TeamRewardOnPolicyAlgorithm)
    processed = algorithm._preprocess_batch(batch, buffer, indices)
    # Team rewards 1 then 3; zero values, so advantages are GAE sums with gamma*lambda = .45.
    assert processed["a"].returns.tolist() == pytest.approx([1 + 0.45 * 3, 3])
    assert processed["b"].returns.tolist() == pytest.approx([1 + 0.45 * 3, 3])
    assert np.array_equal(buffer.rew, own_columns)  # the buffer keeps the roles' own rewards


def test_one_critic_for_the_team_conditioned_on_the_slate(small_pipeline: Pipeline) -> None:
    spec = small_pipeline.env.spec
    agent = MAPPO(MAPPOConfig(), spec=spec, device=torch.device("cpu"))
    assert isinstance(agent.critic(0), SlateCritic) and agent.critic(0) is agent.critic(1)
    assert agent.actor(0) is not agent.actor(1)
    batch, _ = observation_batch(small_pipeline, 2)  # one candidate already chosen
    chosen = spec.layout.split(torch.as_tensor(batch.obs.obs))["chosen"][0].argmax()
    slate = np.zeros((2, spec.layout.n_candidates, len(spec.roles) + 1), dtype=np.float32)
    slate[:, chosen, -1] = 1.0
    slate[0, chosen, 0] = 1.0  # placed by the first role ...
    slate[1, chosen, 1] = 1.0  # ... or by the second
    values = agent.critic(0)(Batch(obs=batch.obs.obs, slate=slate)).flatten()
    assert values[0] != values[1]


@pytest.mark.parametrize("share", [False, True])
def test_actors_sample_in_training_and_act_greedily_otherwise(
    small_pipeline: Pipeline, share: bool
) -> None:
    env = small_pipeline.env
    agent = MAPPO(MAPPOConfig(share=share), spec=env.spec, device=torch.device("cpu"))
    algorithm = agent._algorithm(multi_agent_env(env, "mappo"))
    batch, mask = observation_batch(small_pipeline, 256)
    greedy = algorithm.policy(batch).act
    assert len(set(greedy.tolist())) == 1 and mask[greedy[0]]
    with policy_within_training_step(algorithm.policy):
        sampled = algorithm.policy(batch).act
    assert len(set(sampled.tolist())) > 1 and mask[sampled].all()


def test_mappo_beats_random_and_restores_from_its_state_dict(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    spec, cpu = small_pipeline.env.spec, torch.device("cpu")
    torch.manual_seed(0)
    agent = MAPPO(MAPPOConfig(), spec=spec, device=cpu)
    train_agent(small_pipeline, agent, tmp_path)
    random = session_eval(
        small_pipeline.env,
        baseline_actor(small_pipeline.env, small_pipeline.baselines["random"]),
        150,
        20_000,
    )["mean_return"]
    assert mean_return(small_pipeline, agent) > random
    restored = MAPPO(MAPPOConfig(), spec=spec, device=cpu)
    restored.load_state_dict(agent.state_dict())
    batch, _ = observation_batch(small_pipeline, 1)
    obs = torch.as_tensor(batch.obs.obs)
    assert torch.equal(restored.candidate_scores(obs, 0), agent.candidate_scores(obs, 0))


def test_roles_left_out_of_rl_keep_their_actor_while_the_others_learn(
    small_pipeline: Pipeline, tmp_path: Path
) -> None:
    spec, cpu = small_pipeline.env.spec, torch.device("cpu")
    learning, kept = spec.roles
    torch.manual_seed(0)
    agent = MAPPO(MAPPOConfig(rl_roles=[learning]), spec=spec, device=cpu)
    before = [copy.deepcopy(agent.actor(r).state_dict()) for r in range(2)]
    train_agent(small_pipeline, agent, tmp_path, max_epochs=1, imitation_steps=0)
    after = [agent.actor(r).state_dict() for r in range(2)]
    assert any(not torch.equal(before[0][k], after[0][k]) for k in before[0])  # learning
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])  # kept
    with pytest.raises(PluginError, match=f"agent.rl_roles names 'business'.*{kept}"):
        MAPPO(MAPPOConfig(rl_roles=["business"]), spec=spec, device=cpu)
