"""`dqn` and `ppo` on the `single` env: env checks, masks, exploration, learning, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tianshou.data import Batch
from tianshou.utils.torch_utils import policy_within_training_step

from marlrec.agents.mappo import MAPPO, MAPPOConfig
from marlrec.agents.ppo import IndependentPPO, PPOConfig
from marlrec.agents.single import DQNConfig, SingleDQN, SinglePPO, SinglePPOConfig
from marlrec.envs.core import SlateConfig
from marlrec.envs.slate import SlateEnvironment
from marlrec.evaluation.harness import agent_actor, baseline_actor, session_eval
from marlrec.pipeline import Pipeline, build
from marlrec.registry import PluginError
from tests.conftest import SMALL, compose_config
from tests.test_ppo import train_agent

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def single(offline_cache: Path) -> Pipeline:
    return build(compose_config([*SMALL, "env=single", "agent=ppo"]))


def session_return(pipeline: Pipeline, act: Any, sessions: int = 150) -> float:
    return session_eval(pipeline.env, act, sessions, 20_000)["mean_return"]


def first_observation(pipeline: Pipeline, copies: int) -> tuple[Batch, np.ndarray]:
    """An observation with one slot already filled, as Tianshou hands it to the policy."""
    gym_env = pipeline.env.make()
    observation, _ = gym_env.reset(seed=5)
    observation, *_ = gym_env.step(int(np.flatnonzero(observation["mask"])[0]))
    batch = Batch(
        obs=Batch(
            obs=np.repeat(observation["obs"][None], copies, 0),
            mask=np.repeat(observation["mask"][None], copies, 0),
        ),
        info=Batch(),
    )
    return batch, observation["mask"]


def test_single_agents_refuse_multi_agent_envs(small_pipeline: Pipeline, tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="agent 'dqn' is single-agent and needs env=single"):
        SingleDQN(DQNConfig(), spec=small_pipeline.env.spec, device=CPU)
    # One role is not enough: the `slate` env's roles still take turns through PettingZoo.
    solo = SlateEnvironment(SlateConfig(roles=["solo"]), ctx=small_pipeline.env.ctx)
    agent = SinglePPO(SinglePPOConfig(), spec=solo.spec, device=CPU)
    with pytest.raises(PluginError, match="agent 'ppo' is single-agent and needs env=single"):
        train_agent(small_pipeline, agent, tmp_path, env=solo)


@pytest.mark.parametrize(
    ("cls", "config", "name"),
    [(IndependentPPO, PPOConfig(), "ippo"), (MAPPO, MAPPOConfig(), "mappo")],
)
def test_multi_agent_agents_refuse_the_single_env(
    single: Pipeline, tmp_path: Path, cls: type, config: Any, name: str
) -> None:
    agent = cls(config, spec=single.env.spec, device=CPU)
    with pytest.raises(PluginError, match=f"agent '{name}' is multi-agent"):
        train_agent(single, agent, tmp_path)


def test_ppo_samples_within_the_mask_in_training_only(single: Pipeline) -> None:
    agent = SinglePPO(SinglePPOConfig(), spec=single.env.spec, device=CPU)
    policy = agent._algorithm().policy
    batch, mask = first_observation(single, 256)
    greedy = policy(batch).act
    assert len(set(greedy.tolist())) == 1 and mask[greedy[0]]
    with policy_within_training_step(policy):
        sampled = policy(batch).act
    assert len(set(sampled.tolist())) > 1 and mask[sampled].all()


def test_dqn_explores_within_the_mask_in_training_only(single: Pipeline) -> None:
    agent = SingleDQN(DQNConfig(eps_start=1.0), spec=single.env.spec, device=CPU)
    policy = agent._algorithm().policy
    batch, mask = first_observation(single, 256)
    greedy = policy(batch).act
    assert len(set(greedy.tolist())) == 1 and mask[greedy[0]]
    assert np.array_equal(policy.add_exploration_noise(greedy.copy(), batch), greedy)
    with policy_within_training_step(policy):
        explored = policy.add_exploration_noise(greedy.copy(), batch)
    assert len(set(explored.tolist())) > 1 and mask[explored].all()


@pytest.mark.parametrize(
    ("cls", "config"), [(SingleDQN, DQNConfig()), (SinglePPO, SinglePPOConfig())]
)
def test_single_agents_beat_random_and_restore_from_their_state_dict(
    single: Pipeline, tmp_path: Path, cls: type, config: Any
) -> None:
    torch.manual_seed(0)
    agent = cls(config, spec=single.env.spec, device=CPU)
    train_agent(single, agent, tmp_path)
    random = session_return(single, baseline_actor(single.env, single.baselines["random"]))
    assert session_return(single, agent_actor(single.env, agent)) > random
    restored = cls(config, spec=single.env.spec, device=CPU)
    restored.load_state_dict(agent.state_dict())
    obs = torch.as_tensor(first_observation(single, 1)[0].obs.obs)
    assert torch.equal(restored.candidate_scores(obs, 0), agent.candidate_scores(obs, 0))
