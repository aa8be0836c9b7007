"""Every worked example of docs/plugins.md runs, uses only `marlrec.api`, and does what it says."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from marlrec import registry
from marlrec.api import EnvSpec, Histories, ObsLayout, PluginError, RecData, SlateOutcome

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
EXAMPLES = {
    "ShelfDataset",
    "WordHashEncoder",
    "DecayedMeanState",
    "RecentCoRetriever",
    "PopularClickSimulator",
    "FreshClickReward",
    "RecentPopularityBaseline",
    "PopularityMixAgent",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every class the page's Python blocks define, each block imported as its own module.

    Imported from files, not exec'd, so that the field docstrings can be read from source.
    """
    folder = tmp_path_factory.mktemp("doc-examples")
    classes: dict[str, Any] = {}
    for number, source in enumerate(blocks("python")):
        module = import_file(folder / f"plugins_doc_example_{number}.py", source)
        classes.update(
            {
                k: v
                for k, v in vars(module).items()
                if getattr(v, "__module__", "") == module.__name__
            }
        )
    return classes


def import_file(path: Path, source: str) -> ModuleType:
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses and type hints look the module up
    spec.loader.exec_module(module)
    return module


def test_every_kind_but_env_has_an_example(examples: dict[str, Any]) -> None:
    assert set(examples) >= EXAMPLES


def test_examples_import_marlrec_only_through_the_public_api() -> None:
    for source in blocks("python"):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "marlrec" or node.module == "marlrec.api"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("marlrec") for a in node.names)


def test_every_option_has_a_docstring(examples: dict[str, Any]) -> None:
    for name in EXAMPLES:
        config_cls = examples[name].Config
        fields = {f.name for f in dataclasses.fields(config_cls)}
        assert set(registry.field_docs(config_cls)) == fields, name


def test_yaml_examples_validate_against_their_configs(examples: dict[str, Any]) -> None:
    reward_yaml, simulator_yaml = (yaml.safe_load(text) for text in blocks("yaml"))
    # Each file extends its plugin's stored defaults.
    assert reward_yaml.pop("defaults") == ["fresh_click_config", "_self_"]
    assert simulator_yaml.pop("defaults") == ["popular_click_config", "_self_"]
    reward = registry.build_config(
        "reward", "fresh_click", examples["FreshClickReward"].Config, reward_yaml["fresh_click"]
    )
    assert reward.weight == 0.5
    section = {k: v for k, v in simulator_yaml.items() if k != "name"}
    config_cls = examples["PopularClickSimulator"].Config
    assert registry.build_config("simulator", "popular_click", config_cls, section) == config_cls()


@pytest.fixture(scope="module")
def shelf(examples: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> RecData:
    cls = examples["ShelfDataset"]
    return cls(cls.Config()).load(seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def test_dataset_is_dense_split_and_seeded(
    shelf: RecData, examples: dict[str, Any], tmp_path: Path
) -> None:
    cls = examples["ShelfDataset"]
    assert (shelf.n_users, shelf.n_items, len(shelf.item_text)) == (40, 48, 48)
    assert shelf.interactions.item.min() >= 0 and shelf.interactions.item.max() < 48
    # Leave-one-out: every user (6 interactions) keeps 4 in training and holds out 2.
    assert len(shelf.split.train) == 40 * 4 and (shelf.split.test_item >= 0).all()
    shelves = [set(h // 12) for h in shelf.interactions.histories(40)]
    assert all(len(s) == 1 for s in shelves)  # each user browses one shelf
    again = cls(cls.Config()).load(seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.interactions.item, shelf.interactions.item)
    with pytest.raises(PluginError, match="multiple of n_shelves"):
        cls(cls.Config(n_items=50))
    with pytest.raises(PluginError, match="split must be one of"):
        cls(cls.Config(split="by_shelf"))


def test_encoder_embeds_words(examples: dict[str, Any], tmp_path: Path) -> None:
    cls = examples["WordHashEncoder"]
    encoder = cls(cls.Config(dim=16), cache_dir=tmp_path, device=torch.device("cpu"))
    emb = encoder.encode(["red book", "Red  book", "blue lamp"])
    assert emb.shape == (3, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], emb[1])
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_state_is_a_decayed_mean_and_finite_when_empty(examples: dict[str, Any]) -> None:
    cls = examples["DecayedMeanState"]
    state = cls(cls.Config(decay=0.5), item_dim=2)
    history = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [float("nan")] * 2]] * 2)
    out = state(history, torch.tensor([2, 0]))
    assert state.dim == 2 and out.shape == (2, 2)
    # The last item weighs 1, the one before it 0.5; padding (NaN here) never leaks.
    torch.testing.assert_close(out[0], torch.tensor([0.5, 1.0]) / 1.5)
    torch.testing.assert_close(out[1], torch.zeros(2))


def test_retriever_scores_what_followed_the_recent_items(
    shelf: RecData, examples: dict[str, Any]
) -> None:
    cls = examples["RecentCoRetriever"]
    retriever = cls(cls.Config(recent=1), data=shelf, item_emb=torch.zeros(shelf.n_items, 2))
    first = shelf.train_histories[0]
    histories = Histories.pack([first[:1], np.empty(0, dtype=np.int64)])
    scores = retriever.scores(torch.zeros(2, 2), histories)
    assert scores.shape == (2, shelf.n_items) and float(scores.min()) >= 0.0
    assert float(scores.max()) <= 1.0
    assert scores[0, first[1]] > 0, "the item that followed in the log is retrieved"
    assert float(scores[1].abs().sum()) == 0.0, "an empty history scores nothing"
    with pytest.raises(PluginError, match=r"retrieval\.recent"):
        cls.Config(recent=0)


def test_simulator_clicks_by_position_and_popularity(
    shelf: RecData, examples: dict[str, Any]
) -> None:
    cls = examples["PopularClickSimulator"]
    emb = torch.zeros(shelf.n_items, 4)
    slate = np.argsort(-shelf.item_popularity)[:4]
    sure = cls(cls.Config(click_rate=1.0), data=shelf, item_emb=emb)
    first = sure.respond(0, slate, np.random.default_rng(3))
    assert first.clicks.dtype == bool and first.clicks.shape == (4,)
    again = sure.respond(0, slate, np.random.default_rng(3))
    np.testing.assert_array_equal(first.clicks, again.clicks)
    clicks = np.mean([sure.respond(0, slate, np.random.default_rng(s)).clicks for s in range(400)])
    assert clicks > 0.2  # the most popular items, looked at by position
    never = cls(cls.Config(click_rate=0.0, leave_no_click=1.0), data=shelf, item_emb=emb)
    response = never.respond(0, slate, np.random.default_rng(0))
    assert not response.clicks.any() and response.leave


def test_reward_counts_clicks_on_items_new_to_the_user(
    shelf: RecData, examples: dict[str, Any]
) -> None:
    cls = examples["FreshClickReward"]
    reward = cls(cls.Config(per_click=2.0), data=shelf, item_emb=torch.zeros(shelf.n_items, 4))
    seen = int(shelf.train_histories[0][0])
    new = [i for i in range(shelf.n_items) if i not in set(shelf.train_histories[0])]
    outcome = SlateOutcome(
        user=0,
        items=np.array([seen, new[0], new[1]]),
        roles=np.array([0, 0, 1]),
        clicks=np.array([True, True, False]),
        step=0,
    )
    assert reward.score(outcome) == 2.0  # one click on a new item, worth 2.0
    with pytest.raises(PluginError, match="per_click"):
        cls(cls.Config(per_click=0.0), data=shelf, item_emb=torch.zeros(shelf.n_items, 4))


def test_baseline_prefers_recent_items(shelf: RecData, examples: dict[str, Any]) -> None:
    cls = examples["RecentPopularityBaseline"]
    emb = torch.zeros(shelf.n_items, 4)
    slow = cls(cls.Config(half_life=1e9), data=shelf, item_emb=emb, seed=0)
    users = np.array([0, 5, 7])
    scores = slow.scores(users)
    assert scores.shape == (3, shelf.n_items)
    torch.testing.assert_close(scores[1], torch.from_numpy(shelf.item_popularity))
    fast = cls(cls.Config(half_life=1.0), data=shelf, item_emb=emb, seed=0)
    train = shelf.split.train
    latest = train.item[np.lexsort((np.arange(len(train)), -train.time))[0]]
    assert int(fast.scores(users)[0].argmax()) == latest


def test_agent_mixes_retrieval_and_popularity(examples: dict[str, Any]) -> None:
    state = examples["DecayedMeanState"](examples["DecayedMeanState"].Config(), item_dim=4)
    layout = ObsLayout(state_dim=4, n_candidates=3, n_roles=2)
    spec = EnvSpec(
        roles=("relevance", "diversity"), layout=layout, item_emb=torch.eye(4), state=state
    )
    cls = examples["PopularityMixAgent"]
    agent = cls(cls.Config(popularity_weight=0.5), spec=spec, device=torch.device("cpu"))
    obs = torch.rand(5, layout.size)
    parts = layout.split(obs)
    expected = parts["scores"] + 0.5 * parts["popularity"]
    torch.testing.assert_close(agent.candidate_scores(obs, 1), expected)
    restored = cls(cls.Config(), spec=spec, device=torch.device("cpu"))
    restored.load_state_dict(agent.state_dict())
    torch.testing.assert_close(restored.candidate_scores(obs, 0), expected)
