"""The `slate` environment: PettingZoo's API contract, rewards, and the policy ranking."""

from __future__ import annotations

import numpy as np
import torch
from pettingzoo.test import api_test

from marlrec.envs.slate import SlateEnvironment


def test_passes_pettingzoo_api_test(small_pipeline) -> None:
    env = small_pipeline.env.make()
    api_test(env, num_cycles=200)


def test_roles_take_turns_and_every_role_gets_the_slate_reward(small_pipeline) -> None:
    env_plugin = small_pipeline.env
    aec = env_plugin.make()
    aec.reset(seed=3)
    core = env_plugin.core
    turns, rewards_seen = [], []
    for slot in range(core.slate_size):
        agent = aec.agent_selection
        turns.append(agent)
        mask = aec.observe(agent)["action_mask"]
        aec.step(int(np.flatnonzero(mask)[0]))
        if slot < core.slate_size - 1:
            assert all(r == 0.0 for r in aec.rewards.values())
        rewards_seen = list(aec.rewards.values())
    roles = list(env_plugin.spec.roles)
    assert turns == [roles[i] for i in core.turn_order]
    clicks = aec.infos[roles[0]]["clicks"]
    assert rewards_seen == [float(clicks)] * len(roles)  # cooperative click reward, weight 1


def test_chosen_candidates_are_masked_and_history_never_retrieved(small_pipeline) -> None:
    aec = small_pipeline.env.make()
    aec.reset(seed=5, options={"user": 7})
    history = set(small_pipeline.data.train_histories[7].tolist())
    candidates = aec.unwrapped._candidates[0].tolist()
    assert not history & set(candidates)
    first = aec.agent_selection
    aec.step(0)
    mask = aec.observe(aec.agent_selection)["action_mask"]
    assert mask[0] == 0 and mask[1:].all()
    assert first != aec.agent_selection


def test_invalid_action_is_refused(small_pipeline) -> None:
    aec = small_pipeline.env.make()
    aec.reset(seed=0)
    aec.step(0)
    try:
        aec.step(0)
    except ValueError as err:
        assert "not an available candidate" in str(err)
    else:
        raise AssertionError("choosing a candidate twice must fail")


def test_rank_puts_the_policy_slate_first_and_excludes_history(small_pipeline) -> None:
    env: SlateEnvironment = small_pipeline.env
    data = small_pipeline.data
    users = np.arange(10)
    histories = [data.train_histories[u] for u in users]

    # A scorer that prefers the candidate in the last position: the slate is then predictable.
    def prefer_last(obs: torch.Tensor, role: int) -> torch.Tensor:
        m = env.spec.layout.n_candidates
        return torch.arange(m, dtype=torch.float32).expand(obs.shape[0], m)

    top = env.rank(prefer_last, users, histories, k=30)
    core = env.core
    states = core.states(histories)
    cand, _ = core.candidates(core.retrieval_scores(states, histories))
    expected_slate = cand.flip(-1)[:, : core.slate_size]
    assert torch.equal(top[:, : core.slate_size], expected_slate)
    rest = slice(core.slate_size, core.n_candidates)
    assert torch.equal(top[:, rest], cand.flip(-1)[:, rest])
    for row, history in zip(top.tolist(), histories, strict=True):
        assert not set(row) & set(history.tolist())
        assert len(set(row)) == len(row)
