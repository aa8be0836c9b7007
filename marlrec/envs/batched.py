"""The fast path: many users' sessions stepped at once as tensors, as a Tianshou vector env.

`BatchedSlateEnv(core, roles, num_envs)` plays, step for step, what
`DummyVectorEnv([PettingZooEnv(SlateAEC(core, roles))] * num_envs)` plays: the same users, the
same candidates, the same rewards for the same actions on the same seed. Per-slot work
(observations, masks, choices) is tensor operations over every ready session; retrieval, the
state model and exploration run once per slate for all sessions that start one. Only the
simulator and the reward plugins, which answer one user at a time, loop over users, once per
slate.

Two output formats:
- `stacked=True` (the default, for training): observations come as one Tianshou `Batch`
  (`agent_id`, `obs`, `mask`), which is what a collector would stack per-copy dicts into, and
  a copy's info is `{}` except on the step that answered its slate, where it carries the
  slate's terms. A collector then spends almost no time converting them.
- `stacked=False`: per-copy observation dicts `{"agent_id", "obs", "mask"}` and infos exactly
  as the per-user envs give them (the last slate's info until the next one, `env_id` added),
  `mask` a boolean array where `PettingZooEnv` gives a list of booleans.

With `single_agent=True` it mirrors `DummyVectorEnv([SingleSlateEnv(core)] * num_envs)`
instead: observations `{"obs", "mask"}` and one reward per session (unstacked, infos also hold
`action_mask`, as the gymnasium env's do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from tianshou.data import Batch
from tianshou.env import BaseVectorEnv

from marlrec.data import Histories
from marlrec.envs.session import session_users, slate_observation_space
from marlrec.registry import MarlrecError

if TYPE_CHECKING:
    from marlrec.envs.core import SlateCore

EnvIds = int | Sequence[int] | np.ndarray | None


class BatchedSlateEnv(BaseVectorEnv):
    """`num_envs` slate sessions as one Tianshou vector env; row i plays env copy i."""

    # BaseVectorEnv routes every attribute lookup through Python to forward gymnasium's
    # reserved names to its workers; here those names are properties, and lookups stay fast.
    __getattribute__ = object.__getattribute__

    @property
    def action_space(self) -> list[spaces.Discrete]:
        return self.get_env_attr("action_space")

    @property
    def observation_space(self) -> list[spaces.Space]:
        return self.get_env_attr("observation_space")

    @property
    def metadata(self) -> list[dict[str, Any]]:
        return self.get_env_attr("metadata")

    @property
    def spec(self) -> list[None]:
        return self.get_env_attr("spec")

    @property
    def reward_range(self) -> list[tuple[float, float]]:
        return self.get_env_attr("reward_range")

    def __init__(
        self,
        core: SlateCore,
        roles: list[str],
        num_envs: int,
        *,
        single_agent: bool = False,
        stacked: bool = True,
    ) -> None:
        # BaseVectorEnv's constructor builds one worker per env copy: there are none here.
        if num_envs < 1:
            raise MarlrecError(f"a batched env needs at least one env copy, got {num_envs}")
        self.core, self.roles = core, list(roles)
        self.single_agent, self.stacked = single_agent, stacked
        self.env_num = self.wait_num = num_envs
        self.timeout = None
        self.is_async, self.is_closed = False, False
        self.waiting_conn, self.waiting_id = [], []
        self.ready_id = list(range(num_envs))
        self._spaces = self._make_spaces(num_envs)
        self._users_pool = session_users(core.ctx.data)
        self._turn_order = torch.as_tensor(core.turn_order, device=core.ctx.device)
        self._allocate(num_envs)

    def _make_spaces(self, num_envs: int) -> dict[str, list[Any]]:
        """Per-copy spaces, as each copy of the per-user env would have its own."""
        m = self.core.n_candidates
        if self.single_agent:
            obs_space: spaces.Space = single_observation_space(self.core)
        else:
            obs_space = slate_observation_space(self.core)
        return {
            "action_space": [spaces.Discrete(m) for _ in range(num_envs)],
            "observation_space": [obs_space] * num_envs,
            "metadata": [{"render_modes": ["ansi"]}] * num_envs,
            "spec": [None] * num_envs,
            "reward_range": [(-float("inf"), float("inf"))] * num_envs,
        }

    def _allocate(self, n: int) -> None:
        core, device = self.core, self.core.ctx.device
        # Room for the longest training history and every click of a session; a simulator
        # that starts sessions from longer histories makes it grow (`_ensure_capacity`).
        longest = max((len(h) for h in core.ctx.data.train_histories), default=0)
        capacity = max(1, longest + core.max_slates * core.slate_size)
        m = core.n_candidates
        self.rngs = [np.random.default_rng() for _ in range(n)]
        self.users = np.zeros(n, dtype=np.int64)
        self.history = torch.full((n, capacity), -1, dtype=torch.long, device=device)
        self.history_len = torch.zeros(n, dtype=torch.long, device=device)
        self.states = torch.zeros(n, core.layout.state_dim, device=device)
        self.recent = torch.full((n, core.history_len), -1, dtype=torch.long, device=device)
        self.candidates = torch.zeros(n, m, dtype=torch.long, device=device)
        self.cand_scores = torch.zeros(n, m, device=device)
        self.features = torch.zeros(n, m, core.layout.n_features, device=device)
        self.chosen = torch.zeros(n, m, dtype=torch.bool, device=device)
        self.slate = torch.zeros(n, core.slate_size, dtype=torch.long, device=device)
        self.slot = torch.zeros(n, dtype=torch.long, device=device)
        self.slate_number = torch.zeros(n, dtype=torch.long, device=device)
        self.done = np.zeros(n, dtype=bool)
        self.rewards = np.zeros((n, core.n_roles), dtype=np.float64)
        self.infos: list[dict[str, Any]] = [{} for _ in range(n)]
        self._slate_done = np.zeros(n, dtype=bool)  # this step answered the row's slate
        # Running tallies per copy, read by training logs through `get_env_attr`.
        self.reward_term_totals: list[dict[str, float]] = [{} for _ in range(n)]
        self.scored_slates = np.zeros(n, dtype=np.int64)

    # --- the vector-env interface ---------------------------------------------------------

    def get_env_attr(self, key: str, id: EnvIds = None) -> list[Any]:
        ids = self._wrap_id(id)
        if key in self._spaces:
            return [self._spaces[key][i] for i in ids]
        counters = {"user": self.users, "scored_slates": self.scored_slates}
        if key in counters or key == "slate_number":
            values = counters[key] if key in counters else self.slate_number.cpu().numpy()
            return [int(values[i]) for i in ids]
        if key == "reward_term_totals":
            return [dict(self.reward_term_totals[i]) for i in ids]
        raise AttributeError(f"the batched slate env has no per-copy attribute '{key}'")

    def set_env_attr(self, key: str, value: Any, id: EnvIds = None) -> None:
        raise AttributeError(f"the batched slate env's copies have no settable '{key}'")

    def seed(self, seed: int | list[int] | None = None) -> list[list[int] | None]:
        """Seed copy i with `seed + i` (or `seed[i]`) and restart its session, as Tianshou's
        dummy workers do with the per-user env (seeding resets it)."""
        self._assert_is_not_closed()
        if seed is None:
            seeds: list[int | None] = [None] * self.env_num
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.env_num)]
        else:
            seeds = list(seed)
        for i, s in enumerate(seeds):
            self._spaces["action_space"][i].seed(s)
            if s is not None:
                self.rngs[i] = np.random.default_rng(s)
        self._reset_rows(np.arange(self.env_num))
        return [[s] if s is not None else None for s in seeds]

    def reset(self, env_id: EnvIds = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Restart the copies `env_id`. `seed` and `options["user"]` may be lists, one entry
        per copy, so that many sessions of chosen users and seeds open in one call."""
        self._assert_is_not_closed()
        ids = np.asarray(self._wrap_id(env_id), dtype=np.int64)
        seed, options = kwargs.get("seed"), kwargs.get("options") or {}
        if seed is not None:
            # One seed for every copy reset, or a list with one per copy.
            seeds = list(seed) if isinstance(seed, Sequence | np.ndarray) else [seed] * len(ids)
            for i, s in zip(ids, seeds, strict=True):
                self._spaces["action_space"][i].seed(int(s))
                self.rngs[i] = np.random.default_rng(int(s))
        self._reset_rows(ids, options.get("user"))
        observations = self._observations(ids)
        if self.stacked or not self.single_agent:
            infos = [{} for _ in ids]
        else:
            infos = [{"action_mask": mask} for mask in observations.mask]
        return self._output(observations), _object_array(infos)

    def step(self, action: np.ndarray | torch.Tensor | None, id: EnvIds = None) -> tuple:
        self._assert_is_not_closed()
        if action is None:
            raise ValueError("action must be given: the batched env is synchronous")
        ids = np.asarray(self._wrap_id(id), dtype=np.int64)
        actions = torch.as_tensor(np.asarray(action), dtype=torch.long).reshape(-1)
        if len(actions) != len(ids):
            raise ValueError(f"{len(actions)} actions for {len(ids)} env copies")
        self._apply(ids, actions.to(self.core.ctx.device))
        observations = self._observations(ids)
        infos = [self._info(i, k, observations) for k, i in enumerate(ids.tolist())]
        rewards = self.rewards[ids, 0] if self.single_agent else self.rewards[ids]
        return (
            self._output(observations),
            rewards,
            self.done[ids],
            np.zeros(len(ids), dtype=bool),
            _object_array(infos),
        )

    def render(self, **kwargs: Any) -> list[Any]:
        texts = self.core.ctx.data.item_text
        return [
            f"user {self.users[i]}, slate {int(self.slate_number[i])}: "
            + " | ".join(texts[item][:60] for item in self.slate[i, : self.slot[i]].tolist())
            for i in range(self.env_num)
        ]

    def close(self) -> None:
        self._assert_is_not_closed()
        self.is_closed = True

    # --- session mechanics ------------------------------------------------------------------

    def _reset_rows(self, ids: np.ndarray, user: int | Sequence[int] | None = None) -> None:
        """Open new sessions: of `user` (one for every row, or one per row), else of a user
        each row draws from its own generator."""
        if user is None or isinstance(user, Sequence | np.ndarray):
            users = user
        else:
            users = [user] * len(ids)
        histories = []
        for k, i in enumerate(ids.tolist()):
            chosen = int(self.rngs[i].choice(self._users_pool)) if users is None else int(users[k])
            self.users[i] = chosen
            histories.append(self.core.start_session(chosen, self.rngs[i]))
            self.infos[i] = {}
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        self._ensure_capacity(int(lengths.max()) + self.core.max_slates * self.core.slate_size)
        device = self.history.device
        rows = torch.as_tensor(ids, device=device)
        self.history[rows] = -1
        offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        self.history[
            torch.as_tensor(np.repeat(ids, lengths), device=device),
            torch.as_tensor(offsets, device=device),
        ] = torch.as_tensor(np.concatenate([np.zeros(0, np.int64), *histories]), device=device)
        self.history_len[rows] = torch.as_tensor(lengths, device=device)
        self.slate_number[rows] = 0
        self.done[ids] = False
        self.rewards[ids] = 0.0
        self._slate_done[ids] = False
        self._start_slates(ids)

    def _ensure_capacity(self, needed: int) -> None:
        if needed > self.history.shape[1]:
            grown = torch.full(
                (self.env_num, needed), -1, dtype=torch.long, device=self.history.device
            )
            grown[:, : self.history.shape[1]] = self.history
            self.history = grown

    def _start_slates(self, ids: np.ndarray, retrieve: np.ndarray | None = None) -> None:
        """New slates for the rows in `ids`: state, retrieval and exploration at once for those
        `retrieve` marks (all by default); the others keep their last slate's candidates."""
        rows = torch.as_tensor(ids, device=self.history.device)
        self.chosen[rows] = False
        self.slot[rows] = 0
        if retrieve is not None:
            ids = ids[retrieve]
        if len(ids) == 0:
            return
        core = self.core
        rows = torch.as_tensor(ids, device=self.history.device)
        width = max(1, int(self.history_len[rows].max()))
        history = Histories.from_padded(self.history[rows, :width], self.history_len[rows])
        states = core.states(history)
        self.states[rows] = states
        self.recent[rows] = core.recent(history)
        rngs = [self.rngs[i] for i in ids.tolist()]
        candidates, cand_scores = core.slate_candidates(states, history, rngs)
        self.candidates[rows], self.cand_scores[rows] = candidates, cand_scores
        self.features[rows] = core.candidate_features(states, history, candidates)

    def _apply(self, ids: np.ndarray, actions: torch.Tensor) -> None:
        """Each row in `ids` fills its next slot with its action; full slates are answered."""
        if self.done[ids].any():
            stale = ids[self.done[ids]].tolist()
            raise ValueError(f"env copies {stale} ended their session: reset them first")
        rows = torch.as_tensor(ids, device=self.history.device)
        m = self.core.n_candidates
        mask = self.core.action_mask(self.cand_scores[rows], self.chosen[rows])
        in_range = (actions >= 0) & (actions < m)
        allowed = in_range & mask.gather(1, actions.clamp(0, m - 1)[:, None]).squeeze(1)
        if not bool(allowed.all()):
            bad = int(torch.nonzero(~allowed)[0])
            raise ValueError(
                f"env copy {int(ids[bad])}: action {int(actions[bad])} is not an available "
                f"candidate"
            )
        self.chosen[rows, actions] = True
        self.slate[rows, self.slot[rows]] = self.candidates[rows, actions]
        self.slot[rows] += 1
        self.rewards[ids] = 0.0
        self._slate_done[ids] = False
        full = ids[(self.slot[rows] == self.core.slate_size).cpu().numpy()]
        if len(full):
            self._answer(full)

    def _answer(self, ids: np.ndarray) -> None:
        """The simulator answers each full slate (one user at a time), then the next begins."""
        core = self.core
        device = self.history.device
        rows = torch.as_tensor(ids, device=device)
        slates = self.slate[rows].cpu().numpy()
        numbers = self.slate_number[rows].cpu().numpy()
        clicks = np.zeros(slates.shape, dtype=bool)
        for k, i in enumerate(ids.tolist()):
            outcome, score = core.answer(
                int(self.users[i]), slates[k], int(numbers[k]), self.rngs[i]
            )
            self.rewards[i] = score.role_rewards
            self.infos[i] = core.slate_info(outcome, score)
            totals = self.reward_term_totals[i]
            for name, value in score.terms.items():
                totals[name] = totals.get(name, 0.0) + value
            self.scored_slates[i] += 1
            clicks[k] = outcome.clicks
            self.done[i] = outcome.leave or int(numbers[k]) + 1 >= core.max_slates
        # Clicked items join the histories, in slot order, all rows at once.
        clicks_t = torch.as_tensor(clicks, device=device)
        positions = self.history_len[rows, None] + clicks_t.long().cumsum(1) - 1
        hit_rows, hit_slots = torch.nonzero(clicks_t, as_tuple=True)
        self.history[rows[hit_rows], positions[hit_rows, hit_slots]] = self.slate[rows][
            hit_rows, hit_slots
        ]
        self.history_len[rows] += clicks_t.sum(1)
        self.slate_number[rows] += 1
        self._slate_done[ids] = True
        going_on = ~self.done[ids]
        retrieve = clicks.any(1) | (not core.reuse_retrieval)
        self._start_slates(ids[going_on], retrieve[going_on])

    def _observations(self, ids: np.ndarray) -> Batch:
        """What each row's acting agent observes: the next slot's role, or after the session's
        last slate, the first role looking at the answered slate (as the per-user env does)."""
        core = self.core
        rows = torch.as_tensor(ids, device=self.history.device)
        slot = self.slot[rows]
        role = self._turn_order[slot % core.slate_size]
        obs = core.observe(
            self.states[rows],
            self.recent[rows],
            self.candidates[rows],
            self.cand_scores[rows],
            self.chosen[rows],
            role,
            slot,
            self.slate_number[rows],
            self.features[rows],
        )
        mask = core.action_mask(self.cand_scores[rows], self.chosen[rows])
        if self.single_agent:
            return Batch(obs=obs.cpu().numpy(), mask=mask.cpu().numpy())
        agents = np.array([self.roles[r] for r in role.tolist()], dtype=object)
        return Batch(agent_id=agents, obs=obs.cpu().numpy(), mask=mask.cpu().numpy())

    def _output(self, observations: Batch) -> Batch | np.ndarray:
        """The stacked Batch, or one dict per copy as the per-user envs give them."""
        if self.stacked:
            return observations
        keys = list(observations.keys())
        values = [observations[key] for key in keys]
        return _object_array(
            [dict(zip(keys, row, strict=True)) for row in zip(*values, strict=True)]
        )

    def _info(self, i: int, k: int, observations: Batch) -> dict[str, Any]:
        """Row i's info; k is its position in this step's output."""
        if self.stacked:
            return dict(self.infos[i]) if self._slate_done[i] else {}
        if self.single_agent:
            info = {"action_mask": observations.mask[k]}
            if self._slate_done[i]:
                info.update(self.infos[i])
        else:
            # The per-user env keeps the last slate's info until the next slate is answered.
            info = dict(self.infos[i])
        info["env_id"] = i
        return info


def single_observation_space(core: SlateCore) -> spaces.Dict:
    """The single-agent observation: the flat layout and the action mask, as Tianshou's DQN
    reads them (`obs.obs`, `obs.mask`)."""
    return spaces.Dict(
        {
            "obs": spaces.Box(-np.inf, np.inf, (core.layout.size,), np.float32),
            "mask": spaces.Box(0, 1, (core.n_candidates,), np.bool_),
        }
    )


def _object_array(items: list[Any]) -> np.ndarray:
    """A 1-d object array of dicts, as Tianshou's vector envs stack per-copy results."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array
