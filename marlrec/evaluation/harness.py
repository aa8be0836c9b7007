"""One harness for the trained policy and every baseline: full ranking plus simulated sessions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pettingzoo import AECEnv
from tqdm import tqdm

from marlrec.agents import Agent
from marlrec.baselines import Baseline
from marlrec.data import RecData, fill_histories
from marlrec.envs import Environment
from marlrec.evaluation.metrics import ranking_metrics


@dataclass(kw_only=True)
class EvalConfig:
    """The `eval` config group."""

    ks: list[int] = field(default_factory=lambda: [10])
    """Cut-offs for HR@k and NDCG@k."""
    sessions: int = 200
    """Simulated sessions per policy for return, clicks and depth."""
    chunk_users: int = 1024
    """Users ranked per batch (bounds memory: chunk_users x n_items scores)."""


# Ranks users: (users, histories, k) -> top-k item ids (len(users), k), history excluded.
Ranker = Callable[[np.ndarray, list[np.ndarray], int], torch.Tensor]
# Chooses an action in a live env for the agent whose turn it is.
Actor = Callable[[AECEnv, str, dict[str, np.ndarray]], int]


def agent_ranker(env: Environment, agent: Agent) -> Ranker:
    return lambda users, histories, k: env.rank(agent.candidate_scores, users, histories, k)


def baseline_ranker(baseline: Baseline) -> Ranker:
    def rank(users: np.ndarray, histories: list[np.ndarray], k: int) -> torch.Tensor:
        scores = fill_histories(baseline.scores(users).clone().float(), histories, -torch.inf)
        return scores.topk(k, dim=1).indices

    return rank


def agent_actor(env: Environment, agent: Agent) -> Actor:
    def act(aec: AECEnv, role: str, observation: dict[str, np.ndarray]) -> int:
        obs = torch.as_tensor(observation["observation"])[None].to(agent.device)
        scores = agent.candidate_scores(obs, env.spec.roles.index(role))[0].cpu()
        mask = torch.as_tensor(observation["action_mask"], dtype=torch.bool)
        return int(scores.masked_fill(~mask, -torch.inf).argmax())

    return act


def baseline_actor(env: Environment, baseline: Baseline) -> Actor:
    """A baseline fills each slot with the available candidate it scores highest."""
    cache: dict[int, torch.Tensor] = {}

    def act(aec: AECEnv, role: str, observation: dict[str, np.ndarray]) -> int:
        user = aec.unwrapped.user
        if user not in cache:
            cache[user] = baseline.scores(np.array([user]))[0].float().cpu()
        obs = torch.as_tensor(observation["observation"])[None]
        candidates = env.spec.layout.split(obs)["candidates"][0]
        scores = cache[user][candidates]
        mask = torch.as_tensor(observation["action_mask"], dtype=torch.bool)
        return int(scores.masked_fill(~mask, -torch.inf).argmax())

    return act


def ranking_eval(
    data: RecData, rank: Ranker, split: Literal["valid", "test"], cfg: EvalConfig
) -> dict[str, float]:
    """Full ranking over all items but the user's history, for users with a held-out item."""
    target_all = data.split.test_item if split == "test" else data.split.valid_item
    users = np.flatnonzero(target_all >= 0)
    tops = []
    for start in range(0, len(users), cfg.chunk_users):
        chunk = users[start : start + cfg.chunk_users]
        histories = [data.history_before(int(u), split) for u in chunk]
        tops.append(rank(chunk, histories, max(cfg.ks)).cpu())
    target = torch.as_tensor(target_all[users])
    return ranking_metrics(torch.cat(tops), target, tuple(cfg.ks))


def session_eval(env: Environment, act: Actor, n_sessions: int, seed: int) -> dict[str, float]:
    """Mean return, clicks per session, session depth (slates) and each reward term's mean."""
    aec = env.make()
    returns, clicks, depths = [], [], []
    terms: dict[str, list[float]] = {}
    for episode in range(n_sessions):
        aec.reset(seed=seed + episode)
        total, n_clicks, depth, episode_terms = 0.0, 0, 0, dict.fromkeys(env.ctx.rewards, 0.0)
        for agent in aec.agent_iter():
            observation, reward, terminated, truncated, _ = aec.last()
            if agent == aec.possible_agents[0]:
                total += reward  # the reward is cooperative: count it once, through one role
            if terminated or truncated:
                aec.step(None)
                continue
            aec.step(act(aec, agent, observation))
            if "reward_terms" in aec.infos[agent] and aec.unwrapped.slate_number > depth:
                depth = aec.unwrapped.slate_number
                n_clicks += aec.infos[agent]["clicks"]
                for name, value in aec.infos[agent]["reward_terms"].items():
                    episode_terms[name] += value
        returns.append(total)
        clicks.append(n_clicks)
        depths.append(depth)
        for name, value in episode_terms.items():
            terms.setdefault(name, []).append(value)
    results = {
        "mean_return": float(np.mean(returns)),
        "clicks_per_session": float(np.mean(clicks)),
        "session_depth": float(np.mean(depths)),
    }
    results.update({f"reward/{name}": float(np.mean(v)) for name, v in terms.items()})
    return results


def evaluate_policies(
    data: RecData,
    env: Environment,
    rankers: dict[str, Ranker],
    actors: dict[str, Actor],
    cfg: EvalConfig,
    seed: int,
    splits: tuple[Literal["valid", "test"], ...] = ("valid", "test"),
    show_progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Every policy through the same ranking protocol and the same simulated sessions."""
    results: dict[str, dict[str, float]] = {}
    for name in tqdm(rankers, desc="evaluating", disable=not show_progress, leave=False):
        row: dict[str, float] = {}
        for split in splits:
            row.update(
                {
                    f"{split}/{k}": v
                    for k, v in ranking_eval(data, rankers[name], split, cfg).items()
                }
            )
        row.update(
            {f"sim/{k}": v for k, v in session_eval(env, actors[name], cfg.sessions, seed).items()}
        )
        results[name] = row
    return results
