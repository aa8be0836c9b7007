"""One harness for the trained policy and every baseline: ranking plus simulated sessions.

Ranking protocols (`eval.protocol`):
- `full` (default): chronological leave-one-out as RecBole's `LS: valid_and_test`, order `TO`,
  mode `full`: every item outside the user's history is ranked; keys `{split}/{metric}@{k}`.
- `sampled`: each held-out item is ranked among `num_negatives` items drawn uniformly (seeded)
  from those the user has not consumed; accuracy metrics only, keys
  `{split}/sampled/{metric}@{k}` so that a report can never pass them off as full ranking.
- `cold_items`, `cold_users`: full ranking on a split reshaped for cold start (items without
  any training interaction; users with a few): see `marlrec.evaluation.cold`.

Held-out items come from `data.split` (several per user under temporal and random splits).
The validation split is for model selection and early stopping; report the test split once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from marlrec.agents import Agent
from marlrec.data import RecData, fill_histories
from marlrec.envs import Environment
from marlrec.envs.batched import BatchedSlateEnv
from marlrec.envs.session import session_users
from marlrec.evaluation.cold import COLD_PROTOCOLS, cold_start_data
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
    slate_beyond_accuracy,
)
from marlrec.evaluation.rankers import Ranker, ScoringRanker

# Re-exported: callers (runs, baselines tuning themselves) build their rankers from here.
from marlrec.evaluation.rankers import ScoreRanker as ScoreRanker
from marlrec.evaluation.rankers import agent_ranker as agent_ranker
from marlrec.evaluation.rankers import baseline_ranker as baseline_ranker
from marlrec.evaluation.ranking import ChunkTargets, HeldOut, sample_negatives, top_k
from marlrec.progress import progress_bar
from marlrec.registry import MarlrecError, PluginError

if TYPE_CHECKING:
    from marlrec.baselines import Baseline

RankingProtocol = Literal["full", "sampled", "cold_items", "cold_users"]
PROTOCOLS: tuple[str, ...] = ("full", "sampled", *COLD_PROTOCOLS)
SAMPLED_PREFIX = "sampled/"


@dataclass(kw_only=True)
class EvalConfig:
    """The `eval` config group."""

    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    """Metrics to report (see `marlrec.evaluation.metrics`); ranking ones at every cut-off."""
    ks: list[int] = field(default_factory=lambda: [10])
    """Cut-offs K for the ranking metrics; the first is the one runs optimise and print."""
    protocol: RankingProtocol = "full"
    """`full`: rank all items but the history; `sampled`: rank targets among sampled negatives;
    `cold_items` / `cold_users`: full ranking on a split reshaped for cold start."""
    num_negatives: int = 100
    """Negatives per user under the sampled protocol (seeded by the run's seed)."""
    sessions: int = 200
    """Simulated sessions per policy: return, clicks, depth, the slates' diversity and novelty,
    and each role's share of slots and clicks."""
    chunk_users: int = 1024
    """Users ranked per batch (bounds memory: chunk_users x n_items scores)."""
    cold_item_share: float = 0.1
    """Under `cold_items`: the share of items (drawn from the seed) whose every training
    interaction is removed; they alone are the validation and test targets."""
    cold_user_share: float = 0.2
    """Under `cold_users`: the share of users (drawn from the seed) whose training history is
    cut to its last `cold_user_history` interactions; they alone are evaluated."""
    cold_user_history: int = 5
    """Under `cold_users`: training interactions each cold user keeps (the most recent)."""

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
        if self.protocol not in PROTOCOLS:
            raise PluginError(
                f"eval.protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}"
            )
        for key in ("cold_item_share", "cold_user_share"):
            share = getattr(self, key)
            if not 0.0 < share < 1.0:
                raise PluginError(f"eval.{key} must be a fraction between 0 and 1, got {share}")
        if self.cold_user_history < 1:
            raise PluginError(
                f"eval.cold_user_history must be at least 1, got {self.cold_user_history}"
            )
        for key in ("num_negatives", "sessions", "chunk_users"):
            if getattr(self, key) < 1:
                raise PluginError(f"eval.{key} must be at least 1, got {getattr(self, key)}")

    def cold_start_data(self, data: RecData, seed: int) -> RecData:
        """The data this protocol evaluates on: reshaped for the cold ones, else `data`."""
        return cold_start_data(
            data,
            self.protocol,
            item_share=self.cold_item_share,
            user_share=self.cold_user_share,
            user_history=self.cold_user_history,
            seed=seed,
        )

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


# Chooses actions for many sessions at once: (observations (B, size), action masks (B, M),
# role numbers (B,), users (B,)) -> candidate positions (B,).
Actor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray], torch.Tensor]
# Sessions stepped together in one batched env.
SESSION_BATCH = 1024


def agent_actor(env: Environment, agent: Agent) -> Actor:
    """The agent's greedy choice: each role's best-scored available candidate."""

    def act(
        obs: torch.Tensor, mask: torch.Tensor, roles: torch.Tensor, users: np.ndarray
    ) -> torch.Tensor:
        actions = torch.empty(len(obs), dtype=torch.long)
        for role in roles.unique().tolist():
            rows = roles == role
            scores = agent.candidate_scores(obs[rows].to(agent.device), role).cpu()
            actions[rows] = scores.masked_fill(~mask[rows], -torch.inf).argmax(dim=1)
        return actions

    return act


def baseline_actor(env: Environment, baseline: Baseline) -> Actor:
    """A baseline fills each slot with the available candidate it scores highest."""
    cache: dict[int, torch.Tensor] = {}
    layout = env.spec.layout

    def act(
        obs: torch.Tensor, mask: torch.Tensor, roles: torch.Tensor, users: np.ndarray
    ) -> torch.Tensor:
        new = [u for u in dict.fromkeys(users.tolist()) if u not in cache]
        if new:
            cache.update(zip(new, baseline.scores(np.array(new)).float().cpu(), strict=True))
        candidates = layout.split(obs)["candidates"]
        scores = torch.stack([cache[u] for u in users.tolist()]).gather(1, candidates)
        return scores.masked_fill(~mask, -torch.inf).argmax(dim=1)

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
    accumulator = RankingAccumulator(metrics, cfg.ks)
    chunks = _ranked_chunks(
        data, rank, split, held_out, cfg, users, accumulator.max_k, item_emb, seed
    )
    for chunk in chunks:
        accumulator.add(chunk)
    results = accumulator.results()
    if cfg.protocol == "sampled":
        return {SAMPLED_PREFIX + key: value for key, value in results.items()}
    return results


def per_user_accuracy(
    data: RecData,
    rank: Ranker,
    split: Literal["valid", "test"],
    cfg: EvalConfig,
    *,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each user's accuracy metrics (HR, NDCG, MRR, ...) on one split, for the users with a
    held-out item in index order, keyed as `ranking_eval`'s means: what paired tests between
    two policies read."""
    metrics = [
        m for m in cfg.ranking_metrics() if isinstance(m, UserMetric) and m.over == "targets"
    ]
    held_out = HeldOut.of(data, split)
    users = np.flatnonzero(held_out.counts > 0)
    values: dict[str, list[torch.Tensor]] = {}
    for chunk in _ranked_chunks(data, rank, split, held_out, cfg, users, max(cfg.ks), None, seed):
        for metric in metrics:
            for k in cfg.ks:
                values.setdefault(f"{metric.label}@{k}", []).append(metric.per_user(chunk, k))
    prefix = SAMPLED_PREFIX if cfg.protocol == "sampled" else ""
    return {prefix + key: torch.cat(parts).cpu().numpy() for key, parts in values.items()}


def _ranked_chunks(
    data: RecData,
    rank: Ranker,
    split: Literal["valid", "test"],
    held_out: HeldOut,
    cfg: EvalConfig,
    users: np.ndarray,
    max_k: int,
    item_emb: torch.Tensor | None,
    seed: int,
) -> Iterator[RankedChunk]:
    """`users`' top-`max_k` lists and `held_out` items under the protocol, chunk by chunk."""
    if not (held_out.counts > 0).any():
        raise MarlrecError(f"no user has a held-out {split} item to evaluate")
    generator = torch.Generator().manual_seed(seed)
    ctx: MetricContext | None = None
    for start in range(0, len(users), cfg.chunk_users):
        chunk = users[start : start + cfg.chunk_users]
        histories = [data.history_before(int(u), split) for u in chunk]
        if cfg.protocol != "sampled":
            top = rank(chunk, histories, max_k)
            targets = held_out.targets(chunk, data.n_items, top.device)
        else:
            top, targets = _sampled_top(
                rank, chunk, histories, held_out, data.n_items, cfg, generator
            )
        if ctx is None:
            ctx = MetricContext.build(data.item_popularity, item_emb, top.device)
        yield RankedChunk(top, targets, ctx)


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
    if isinstance(rank, ScoringRanker):
        return rank.scores(users, histories)
    order = rank(users, histories, n_items)
    scores = torch.empty(order.shape, dtype=torch.float32, device=order.device)
    descending = torch.arange(n_items, 0, -1, dtype=torch.float32, device=order.device)
    return scores.scatter_(1, order, descending.expand_as(order))


def session_plan(env: Environment, n_sessions: int, seed: int) -> np.ndarray:
    """The users of the evaluation sessions, drawn once; session i is seeded `seed + i`."""
    pool = session_users(env.ctx.data)
    return np.random.default_rng(seed).choice(pool, size=n_sessions)


@dataclass
class SessionTally:
    """Running figures of the evaluation sessions, one entry per session, and each role's part:
    its share of the slots and of the clicks, and its own (role-mixed) return per session."""

    env: Environment
    n_sessions: int

    def __post_init__(self) -> None:
        n, ctx = self.n_sessions, self.env.ctx
        self.statistics = {"return": np.zeros(n), "clicks": np.zeros(n), "depth": np.zeros(n)}
        self.terms = {name: np.zeros(n) for name in ctx.rewards}
        self.roles = list(self.env.spec.roles)
        self.role_slots, self.role_clicks = np.zeros(len(self.roles)), np.zeros(len(self.roles))
        self.role_returns = np.zeros((n, len(self.roles)))
        self.slates: list[np.ndarray] = []
        self.slate_sessions: list[int] = []

    def add_slate(self, session: int, info: dict[str, Any]) -> None:
        # The cooperative reward, once per slate (roles' own λ-mixed rewards differ).
        self.statistics["return"][session] += info["reward_global"]
        self.statistics["clicks"][session] += info["clicks"]
        self.statistics["depth"][session] += 1
        for name, value in info["reward_terms"].items():
            self.terms[name][session] += value
        slot_roles = np.asarray(info["slot_roles"])
        np.add.at(self.role_slots, slot_roles, 1)
        np.add.at(self.role_clicks, slot_roles, np.asarray(info["slot_clicks"], dtype=float))
        self.role_returns[session] += [info["role_rewards"][role] for role in self.roles]
        self.slates.append(np.asarray(info["slate"]))
        self.slate_sessions.append(session)

    def per_session(self) -> dict[str, np.ndarray]:
        """Each statistic (return, clicks, depth, diversity, novelty), one value per session."""
        return {**self.statistics, **self._per_slate_means()}

    def results(self, metrics: Sequence[SessionMetric] | None) -> dict[str, float]:
        chosen = EvalConfig().session_metrics() if metrics is None else metrics
        statistics = {key: values.tolist() for key, values in self.per_session().items()}
        results = session_results([m for m in chosen if m.statistic in statistics], statistics)
        results.update({f"reward/{name}": float(v.mean()) for name, v in self.terms.items()})
        for number, role in enumerate(self.roles):
            results[f"role/{role}/slot_share"] = _share(self.role_slots, number)
            results[f"role/{role}/click_share"] = _share(self.role_clicks, number)
            results[f"role/{role}/return"] = float(self.role_returns[:, number].mean())
        return results

    def _per_slate_means(self) -> dict[str, np.ndarray]:
        """Each session's mean over its slates of each slate's diversity and novelty."""
        if not self.slates:
            return {}
        ctx = self.env.ctx
        metric_ctx = MetricContext.build(
            ctx.data.item_popularity, ctx.item_emb, torch.device("cpu")
        )
        figures = slate_beyond_accuracy(torch.as_tensor(np.stack(self.slates)), metric_ctx)
        sessions = np.asarray(self.slate_sessions)
        depth = np.maximum(self.statistics["depth"], 1)
        return {
            key: np.bincount(sessions, values.numpy(), minlength=self.n_sessions) / depth
            for key, values in figures.items()
        }


def _share(counts: np.ndarray, number: int) -> float:
    total = counts.sum()
    return float(counts[number] / total) if total else 0.0


def session_eval(
    env: Environment,
    act: Actor,
    n_sessions: int,
    seed: int,
    metrics: Sequence[SessionMetric] | None = None,
) -> dict[str, float]:
    """Session metrics (default: mean return, clicks per session, session depth in slates, the
    slates' mean diversity and novelty), each reward term's mean per session and each role's
    part (`role/<role>/slot_share`, `click_share`, `return`), every session stepped in one
    batched env."""
    return play_sessions(env, act, n_sessions, seed).results(metrics)


def play_sessions(env: Environment, act: Actor, n_sessions: int, seed: int) -> SessionTally:
    """The `n_sessions` sessions of `session_plan(env, n_sessions, seed)`, played in one batched
    env (or one after another where the env has no batched form).

    The same figures as `play_sessions_per_user`. A simulator keeps its session state per user,
    so two sessions of one user never run at once: a later one waits for the earlier to end.
    Rewards that remember what the whole run showed (`coverage`) see the slates of different
    users interleaved, not session after session.
    """
    vector = env.make_vector(min(n_sessions, SESSION_BATCH))
    if not isinstance(vector, BatchedSlateEnv):
        return play_sessions_per_user(env, act, n_sessions, seed)
    users = session_plan(env, n_sessions, seed)
    role_of = {role: number for number, role in enumerate(env.spec.roles)}
    tally = SessionTally(env, n_sessions)
    pending = list(range(n_sessions))
    running: dict[int, int] = {}  # env copy -> session
    obs = torch.zeros(vector.env_num, env.spec.layout.size)
    mask = torch.zeros(vector.env_num, env.spec.layout.n_candidates, dtype=torch.bool)
    roles = torch.zeros(vector.env_num, dtype=torch.long)

    def show(rows: np.ndarray, observed: Any) -> None:  # the stacked Batch
        obs[rows] = torch.as_tensor(observed.obs)
        mask[rows] = torch.as_tensor(observed.mask)
        if "agent_id" in observed:
            roles[rows] = torch.as_tensor([role_of[a] for a in observed.agent_id])

    while pending or running:
        starting = _startable(pending, users, running, vector.env_num)
        if starting:
            rows = np.array([r for r in range(vector.env_num) if r not in running][: len(starting)])
            running.update(zip(rows.tolist(), starting, strict=True))
            opened = set(starting)
            pending = [s for s in pending if s not in opened]
            seeds = [seed + s for s in starting]
            observed, _ = vector.reset(rows, seed=seeds, options={"user": users[starting]})
            show(rows, observed)
        rows = np.array(sorted(running))
        actions = act(obs[rows], mask[rows], roles[rows], users[[running[r] for r in rows]])
        observed, _, terminated, truncated, infos = vector.step(actions.numpy(), rows)
        show(rows, observed)
        for row, info, done in zip(rows.tolist(), infos, terminated | truncated, strict=True):
            if "reward_global" in info:
                tally.add_slate(running[row], info)
            if done:
                del running[row]
    return tally


def _startable(
    pending: list[int], users: np.ndarray, running: dict[int, int], capacity: int
) -> list[int]:
    """Sessions to open now, in order: as many as there are free copies, skipping any whose
    user has a session running or an earlier one still waiting."""
    busy = {int(users[s]) for s in running.values()}
    free, chosen = capacity - len(running), list[int]()
    for session in pending:
        if len(chosen) == free:
            break
        user = int(users[session])
        if user not in busy:
            chosen.append(session)
        busy.add(user)
    return chosen


def session_eval_per_user(
    env: Environment,
    act: Actor,
    n_sessions: int,
    seed: int,
    metrics: Sequence[SessionMetric] | None = None,
) -> dict[str, float]:
    """`session_eval` one session after another in the per-user AEC env: the reference for
    environments without a batched form."""
    return play_sessions_per_user(env, act, n_sessions, seed).results(metrics)


def play_sessions_per_user(
    env: Environment, act: Actor, n_sessions: int, seed: int
) -> SessionTally:
    """`play_sessions` one session after another in the per-user AEC env."""
    aec = env.make_aec()
    users = session_plan(env, n_sessions, seed)
    tally = SessionTally(env, n_sessions)
    roles = list(env.spec.roles)
    for session, user in enumerate(users.tolist()):
        aec.reset(seed=seed + session, options={"user": user})
        depth = 0
        for agent in aec.agent_iter():
            observation, _, terminated, truncated, _ = aec.last()
            if terminated or truncated:
                aec.step(None)
                continue
            obs = torch.as_tensor(observation["observation"])[None]
            mask = torch.as_tensor(observation["action_mask"], dtype=torch.bool)[None]
            role = torch.tensor([roles.index(agent)])
            aec.step(int(act(obs, mask, role, np.array([user]))[0]))
            if "reward_terms" in aec.infos[agent] and aec.unwrapped.slate_number > depth:
                depth = aec.unwrapped.slate_number
                tally.add_slate(session, aec.infos[agent])
    return tally


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
    for name in progress_bar(rankers, desc="evaluating", disable=not show_progress, leave=False):
        row: dict[str, float] = {}
        for split in splits:
            figures = ranking_eval(data, rankers[name], split, cfg, item_emb=item_emb, seed=seed)
            row.update({f"{split}/{k}": v for k, v in figures.items()})
        if session_metrics:
            sessions = session_eval(env, actors[name], cfg.sessions, seed, session_metrics)
            row.update({f"sim/{k}": v for k, v in sessions.items()})
        results[name] = row
    return results
