"""The public plugin API: every base class a plugin implements and every type it receives.

A plugin package imports from here only; the modules behind these names may move. Each name is
imported on first use, so `import marlrec.api` is free and a reward plugin does not pull in the
training stack. The registry builds every plugin as `cls(config, **dependencies)`, where
`config` is an instance of the class's keyword-only dataclass `Config` (validated from YAML).

What each kind implements and receives:

- `Dataset(config)`; implements `load(seed=, cache_dir=) -> RecData`. `RecData` holds the
  `Interactions` (dense 0-based ids, sorted by user then time), the catalog's `item_text`,
  optional `item_attributes` and `GroundTruth`, and a `Split`; `split_interactions` makes one.
  `validate_split` checks a config's `split` and `split_ratios`.
- `Encoder(config, cache_dir=, device=)`; implements `encode(texts) -> (len(texts), dim)`.
- `StateModel(config, item_dim=, item_text=None, encoder=None, n_items=None)`, a
  `torch.nn.Module` (`n_items`: the catalog trained on, for per-id parameters); implements `dim`
  and `forward(history (B, L, item_dim), lengths (B,)) -> (B, dim)`, and may override
  `forward_with_ids(history, lengths, ids)` (what the agents' networks call, with the item ids)
  and `from_histories(Histories, item_emb)`, the states of packed item-id histories, to
  avoid padding (pooled states through `embedding_bag`, windowed ones through
  `Histories.last`). `masked_mean`, `real_positions` and `last_items` handle padded ones.
- `Retriever(config, data=, item_emb=)`; implements `scores(states (B, d), Histories) ->
  (B, n_items)` in [-1, 1]: the catalog scored for each slate's candidates (`retrieval=...`).
- `Simulator(config, data=, item_emb=)`; implements `respond(user, slate, rng) -> Response`
  and may override `start_session(user, rng)`. `examination` is the DCG position model.
- `Reward(config, data=, item_emb=)`, whose `Config` extends `RewardConfig` (`weight`);
  implements `score(SlateOutcome) -> float`, unweighted. `Reward.train_history(user)` is the
  user's training history; the session's own slates and clicks are not passed to rewards.
- `Environment(config, ctx=EnvContext)`; implements `spec -> EnvSpec` (with its `ObsLayout`),
  `make()` and `rank(scorer: CandidateScorer, users, histories, k)`, and may implement
  `logged_choices(...) -> LoggedChoices` for imitation.
- `Agent(config, spec=EnvSpec, device=)`; implements `training_plan(env, run: TrainRun) ->
  TrainingPlan | None` (the Tianshou algorithm the shared loop trains; None: nothing to learn),
  `scoring_network(role)`, `state_dict()` and `load_state_dict(state)`.
- `Baseline(config, data=, item_emb=, seed=)`; implements `scores(users) -> (len(users),
  n_items)` and may override `rank_scores(users, histories)`. `train_pairs` and `binary_rows`
  read the training split.

`PluginError` (a `MarlrecError`) is the error to raise for a bad option or input: its message is
one line naming what is wrong and where, and the command line prints it without a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marlrec.agents import Agent, TrainingPlan
    from marlrec.baselines import Baseline, binary_rows, train_pairs
    from marlrec.data import (
        GroundTruth,
        Histories,
        Interactions,
        RecData,
        Split,
        split_interactions,
    )
    from marlrec.datasets import Dataset, validate_split
    from marlrec.encoders import Encoder
    from marlrec.envs import (
        CandidateScorer,
        EnvContext,
        Environment,
        EnvSpec,
        LoggedChoices,
        ObsLayout,
    )
    from marlrec.plugin import NoConfig, Plugin
    from marlrec.registry import MarlrecError, PluginError
    from marlrec.retrieval import Retriever
    from marlrec.rewards import Reward, RewardConfig, SlateOutcome
    from marlrec.settings import TrainRun
    from marlrec.simulators import Response, Simulator, examination
    from marlrec.states import StateModel, last_items, masked_mean, real_positions

# Public name -> the module that defines it.
_HOMES: dict[str, str] = {
    "Plugin": "marlrec.plugin",
    "NoConfig": "marlrec.plugin",
    "MarlrecError": "marlrec.registry",
    "PluginError": "marlrec.registry",
    "RecData": "marlrec.data",
    "Histories": "marlrec.data",
    "Interactions": "marlrec.data",
    "Split": "marlrec.data",
    "GroundTruth": "marlrec.data",
    "split_interactions": "marlrec.data",
    "Dataset": "marlrec.datasets",
    "validate_split": "marlrec.datasets",
    "Encoder": "marlrec.encoders",
    "StateModel": "marlrec.states",
    "masked_mean": "marlrec.states",
    "real_positions": "marlrec.states",
    "last_items": "marlrec.states",
    "Retriever": "marlrec.retrieval",
    "Simulator": "marlrec.simulators",
    "Response": "marlrec.simulators",
    "examination": "marlrec.simulators",
    "Reward": "marlrec.rewards",
    "RewardConfig": "marlrec.rewards",
    "SlateOutcome": "marlrec.rewards",
    "Environment": "marlrec.envs",
    "EnvContext": "marlrec.envs",
    "EnvSpec": "marlrec.envs",
    "ObsLayout": "marlrec.envs",
    "LoggedChoices": "marlrec.envs",
    "CandidateScorer": "marlrec.envs",
    "Agent": "marlrec.agents",
    "TrainingPlan": "marlrec.agents",
    "TrainRun": "marlrec.settings",
    "Baseline": "marlrec.baselines",
    "train_pairs": "marlrec.baselines",
    "binary_rows": "marlrec.baselines",
}

__all__ = [
    "Agent",
    "Baseline",
    "CandidateScorer",
    "Dataset",
    "Encoder",
    "EnvContext",
    "EnvSpec",
    "Environment",
    "GroundTruth",
    "Histories",
    "Interactions",
    "LoggedChoices",
    "MarlrecError",
    "NoConfig",
    "ObsLayout",
    "Plugin",
    "PluginError",
    "RecData",
    "Response",
    "Retriever",
    "Reward",
    "RewardConfig",
    "Simulator",
    "SlateOutcome",
    "Split",
    "StateModel",
    "TrainRun",
    "TrainingPlan",
    "binary_rows",
    "examination",
    "last_items",
    "masked_mean",
    "real_positions",
    "split_interactions",
    "train_pairs",
    "validate_split",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'marlrec.api' has no attribute '{name}'")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
