"""One harness for the trained policy and every baseline: ranking plus simulated sessions.

Ranking protocols (`eval.protocol`):
- `full` (default): chronological leave-one-out as RecBole's `LS: valid_and_test`, order `TO`,
  mode `full`: every item outside the user's history is ranked; keys `{split}/{metric}@{k}`.
- `sampled`: each held-out item is ranked among `num_negatives` items drawn uniformly (seeded)
  from those the user has not consumed; accuracy metrics only, keys
  `{split}/sampled/{metric}@{k}` so that a report can never pass them off as full ranking.

Held-out items come from `data.split` (several per user under temporal and random splits).
The validation split is for model selection and early stopping; report the test split once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pettingzoo import AECEnv
from tqdm import tqdm

from marlrec.agents import Agent
from marlrec.data import RecData, fill_histories
from marlrec.envs import Environment
from marlrec.evaluation.metrics import (
    METRICS,
    CatalogMetric,
    MetricContext,
    RankedChunk,
    RankingAccumulator,
    SessionMetric,
    UserMetric,
    select,
    session_results,
)
from marlrec.evaluation.ranking import ChunkTargets, HeldOut, sample_negatives, top_k
from marlrec.registry import MarlrecError, PluginError

if TYPE_CHECKING:
    from marlrec.baselines import Baseline

RankingProtocol = Literal["full", "sampled"]
SAMPLED_PREFIX = "sampled/"


@dataclass(kw_only=True)
class EvalConfig:
    """The `eval` config group."""

    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    """Metrics to report (see `marlrec.evaluation.metrics`); ranking ones at every cut-off."""
    ks: list[int] = field(default_factory=lambda: [10])
    """Cut-offs K for the ranking metrics; the first is the one runs optimise and print."""
    protocol: RankingProtocol = "full"
    """`full`: rank all items but the history; `sampled`: rank targets among sampled negatives."""
    num_negatives: int = 100
    """Negatives per user under the sampled protocol (seeded by the run's seed)."""
    sessions: int = 200
    """Simulated sessions per policy for return, clicks and depth."""
    chunk_users: int = 1024
    """Users ranked per batch (bounds memory: chunk_users x n_items scores)."""

    def __post_init__(self) -> None:
        unknown = [name for name in self.metrics if name not in METRICS]
        if unknown:
            raise PluginError(
                f"unknown metric '{unknown[0]}' in eval.metrics; known: {', '.join(METRICS)}"
            )
        if not self.ks or min(self.ks) < 1:
            raise PluginError(
                f"eval.ks must be a non-empty list of positive cut-offs, got {self.ks}"
            )
        if self.protocol not in ("full", "sampled"):
            raise PluginError(f"eval.protocol must be 'full' or 'sampled', got {self.protocol!r}")
        for key in ("num_negatives", "sessions", "chunk_users"):
            if getattr(self, key) < 1:
                raise PluginError(f"eval.{key} must be at least 1, got {getattr(self, key)}")

    def ranking_metrics(self) -> list[UserMetric | CatalogMetric]:
        """The selected ranking metrics; the sampled protocol keeps the accuracy ones only,
        since coverage, diversity, novelty and Gini describe full top-K lists."""
        chosen = [m for m in select(self.metrics) if not isinstance(m, SessionMetric)]
        if self.protocol == "sampled":
            chosen = [m for m in chosen if isinstance(m, UserMetric) and m.over == "targets"]
        return chosen

    def session_metrics(self) -> list[SessionMetric]:
        return [m for m in select(self.metrics) if isinstance(m, SessionMetric)]

    def key(self, split: str, metric: str, k: int | None = None) -> str:
        """Where a ranking metric lands in a policy's results, e.g. `valid/NDCG@10` (or
        `valid/sampled/NDCG@10`); `k` defaults to the first cut-off."""
        label = METRICS[metric].label if metric in METRICS else metric
        prefix = SAMPLED_PREFIX if self.protocol == "sampled" else ""
        return f"{split}/{prefix}{label}@{self.ks[0] if k is None else k}"


# Ranks users: (users, histories, k) -> top-k item ids (len(users), k), history excluded.
Ranker = Callable[[np.ndarray, list[np.ndarray], int], torch.Tensor]
# Chooses an action in a live env for the agent whose turn it is.
Actor = Callable[[AECEnv, str, dict[str, np.ndarray]], int]


class ScoreRanker:
    """Ranks by a score function (users, histories) -> (len(users), n_items), history masked."""

    def __init__(self, score: Callable[[np.ndarray, list[np.ndarray]], torch.Tensor]) -> None:
        self.score = score

    def scores(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        scores = self.score(users, histories)
        return scores if scores.is_floating_point() else scores.float()

    def __call__(self, users: np.ndarray, histories: list[np.ndarray], k: int) -> torch.Tensor:
        # A copy: scorers may return views (e.g. one popularity row expanded to every user).
        scores = fill_histories(self.scores(users, histories).clone(), histories, -torch.inf)
        return top_k(scores, k)


def agent_ranker(env: Environment, agent: Agent) -> Ranker:
    return lambda users, histories, k: env.rank(agent.candidate_scores, users, histories, k)


def baseline_ranker(baseline: Baseline) -> ScoreRanker:
    return ScoreRanker(baseline.rank_scores)


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
    data: RecData,
    rank: Ranker,
    split: Literal["valid", "test"],
    cfg: EvalConfig,
    *,
    item_emb: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The selected ranking metrics of one policy on one split, users ranked in chunks.

    Accuracy metrics average over users with a held-out item; list metrics (coverage, ILD,
    novelty, Gini) over every user, so all users are ranked when one of those is selected.
    `item_emb` is needed for ILD; `seed` draws the sampled protocol's negatives (the same
    for every policy given the same seed).
    """
    metrics = cfg.ranking_metrics()
    if not metrics:
        return {}
    if item_emb is None and any("list_embeddings" in m.needs for m in metrics):
        raise MarlrecError("metric 'ild' needs item embeddings: pass item_emb to ranking_eval")
    held_out = HeldOut.of(data, split)
    everyone = any(isinstance(m, CatalogMetric) or m.over == "all" for m in metrics)
    users = np.arange(data.n_users) if everyone else np.flatnonzero(held_out.counts > 0)
    if not (held_out.counts > 0).any():
        raise MarlrecError(f"no user has a held-out {split} item to evaluate")
    accumulator = RankingAccumulator(metrics, cfg.ks)
    generator = torch.Generator().manual_seed(seed)
    ctx: MetricContext | None = None
    for start in range(0, len(users), cfg.chunk_users):
        chunk = users[start : start + cfg.chunk_users]
        histories = [data.history_before(int(u), split) for u in chunk]
        if cfg.protocol == "full":
            top = rank(chunk, histories, accumulator.max_k)
            targets = held_out.targets(chunk, data.n_items, top.device)
        else:
            top, targets = _sampled_top(
                rank, chunk, histories, held_out, data.n_items, cfg, generator
            )
        if ctx is None:
            ctx = MetricContext.build(data.item_popularity, item_emb, top.device)
        accumulator.add(RankedChunk(top, targets, ctx))
    results = accumulator.results()
    if cfg.protocol == "sampled":
        return {SAMPLED_PREFIX + key: value for key, value in results.items()}
    return results


def _sampled_top(
    rank: Ranker,
    users: np.ndarray,
    histories: list[np.ndarray],
    held_out: HeldOut,
    n_items: int,
    cfg: EvalConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, ChunkTargets]:
    """Top-K among each user's targets and sampled negatives, and the targets."""
    scores = policy_scores(rank, users, histories, n_items)
    targets = held_out.mask(users, n_items, scores.device)
    consumed = fill_histories(torch.zeros_like(targets), histories, True)
    negatives = sample_negatives(consumed | targets, cfg.num_negatives, generator)
    candidates = targets | negatives
    top = top_k(scores.masked_fill(~candidates, -torch.inf), max(cfg.ks))
    return top, held_out.targets(users, n_items, scores.device)


def policy_scores(
    rank: Ranker, users: np.ndarray, histories: list[np.ndarray], n_items: int
) -> torch.Tensor:
    """A policy's scores over all items: its own when it has them, else n_items - position
    in its full ranking (history last)."""
    own = getattr(rank, "scores", None)
    if callable(own):
        return own(users, histories)
    order = rank(users, histories, n_items)
    scores = torch.empty(order.shape, dtype=torch.float32, device=order.device)
    descending = torch.arange(n_items, 0, -1, dtype=torch.float32, device=order.device)
    return scores.scatter_(1, order, descending.expand_as(order))


def session_eval(
    env: Environment,
    act: Actor,
    n_sessions: int,
    seed: int,
    metrics: Sequence[SessionMetric] | None = None,
) -> dict[str, float]:
    """Session metrics (default: mean return, clicks per session, session depth in slates)
    and each reward term's mean per session."""
    aec = env.make_aec()
    statistics: dict[str, list[float]] = {"return": [], "clicks": [], "depth": []}
    terms: dict[str, list[float]] = {}
    for episode in range(n_sessions):
        aec.reset(seed=seed + episode)
        total, n_clicks, depth, episode_terms = 0.0, 0, 0, dict.fromkeys(env.ctx.rewards, 0.0)
        for agent in aec.agent_iter():
            observation, _, terminated, truncated, _ = aec.last()
            if terminated or truncated:
                aec.step(None)
                continue
            aec.step(act(aec, agent, observation))
            if "reward_terms" in aec.infos[agent] and aec.unwrapped.slate_number > depth:
                depth = aec.unwrapped.slate_number
                # The cooperative reward, once per slate (roles' own λ-mixed rewards differ).
                total += aec.infos[agent]["reward_global"]
                n_clicks += aec.infos[agent]["clicks"]
                for name, value in aec.infos[agent]["reward_terms"].items():
                    episode_terms[name] += value
        statistics["return"].append(total)
        statistics["clicks"].append(n_clicks)
        statistics["depth"].append(depth)
        for name, value in episode_terms.items():
            terms.setdefault(name, []).append(value)
    chosen = EvalConfig().session_metrics() if metrics is None else metrics
    results = session_results(chosen, statistics)
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
    """Every policy through the same ranking protocol and the same simulated sessions.

    Keys: `{split}/{metric}@{k}` (`{split}/sampled/...` under the sampled protocol) and
    `sim/{metric}`, `sim/reward/{term}`.
    """
    results: dict[str, dict[str, float]] = {}
    item_emb = env.ctx.item_emb
    session_metrics = cfg.session_metrics()
    for name in tqdm(rankers, desc="evaluating", disable=not show_progress, leave=False):
        row: dict[str, float] = {}
        for split in splits:
            figures = ranking_eval(data, rankers[name], split, cfg, item_emb=item_emb, seed=seed)
            row.update({f"{split}/{k}": v for k, v in figures.items()})
        if session_metrics:
            sessions = session_eval(env, actors[name], cfg.sessions, seed, session_metrics)
            row.update({f"sim/{k}": v for k, v in sessions.items()})
        results[name] = row
    return results
