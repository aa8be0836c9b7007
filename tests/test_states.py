"""User-state plugins: `gru`, `transformer` (residual around the mean) and `llm_text`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

import marlrec.run
from marlrec.encoders import Encoder
from marlrec.encoders.hf import HFEncoder
from marlrec.envs.slate import SlateEnvironment
from marlrec.pipeline import Pipeline
from marlrec.registry import MarlrecError, PluginError, load
from marlrec.states.gru import GRUState
from marlrec.states.llm_text import LLMTextState
from marlrec.states.mean import MeanState
from marlrec.states.sequence import SequenceState
from tests.conftest import SMALL, compose_config

ITEM_DIM = 6
MAX_LEN = 5
SEQUENCE_STATES = ["gru", "transformer"]


def make_sequence(name: str, **options: object) -> SequenceState:
    cls = load("state", name)
    config = cls.Config(**{"hidden": 8, "max_len": MAX_LEN, "dropout": 0.0, **options})
    return cls(config, item_dim=ITEM_DIM)


def trained_like(state: SequenceState) -> SequenceState:
    """Give the zero-initialised output projection weights, as training would."""
    with torch.no_grad():
        state.output.weight.normal_()
        state.output.bias.normal_()
    return state


def mean_of(history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return MeanState(MeanState.Config(), item_dim=history.shape[-1])(history, lengths)


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_untrained_state_equals_mean(name: str) -> None:
    torch.manual_seed(0)
    state = make_sequence(name, dropout=0.3).train()
    history = torch.randn(4, MAX_LEN, ITEM_DIM)
    lengths = torch.tensor([0, 1, 3, MAX_LEN])
    out = state(history, lengths)
    assert out.shape == (4, ITEM_DIM) and state.dim == ITEM_DIM
    torch.testing.assert_close(out, mean_of(history, lengths))


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_empty_history_gives_a_finite_state(name: str) -> None:
    state = trained_like(make_sequence(name))
    out = state(torch.full((2, 3, ITEM_DIM), float("nan")), torch.tensor([0, 0]))
    torch.testing.assert_close(out, state.output.bias.detach().expand(2, -1))
    no_positions = state(torch.zeros(2, 0, ITEM_DIM), torch.tensor([0, 0]))
    assert torch.isfinite(no_positions).all() and no_positions.shape == (2, ITEM_DIM)


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_padding_never_changes_a_state(name: str) -> None:
    torch.manual_seed(1)
    state = trained_like(make_sequence(name))
    history = torch.randn(1, 3, ITEM_DIM)
    alone = state(history, torch.tensor([3]))
    batch = torch.randn(3, MAX_LEN, ITEM_DIM)
    batch[1, :3] = history[0]
    batch[1, 3] = float("nan")  # padding may hold anything
    padded = state(batch, torch.tensor([MAX_LEN, 3, 1]))
    torch.testing.assert_close(padded[1], alone[0])


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_state_is_causal_and_read_at_the_last_item(name: str) -> None:
    """Each prefix of one sequence, as lengths 1..L of the same tensor, is that prefix alone."""
    torch.manual_seed(2)
    state = trained_like(make_sequence(name, layers=2))
    sequence = torch.randn(MAX_LEN, ITEM_DIM)
    batch = sequence.expand(MAX_LEN, -1, -1)
    prefixes = state(batch, torch.arange(1, MAX_LEN + 1))
    for n in range(1, MAX_LEN + 1):
        alone = state(sequence[:n].unsqueeze(0), torch.tensor([n]))
        torch.testing.assert_close(prefixes[n - 1], alone[0])
    assert not torch.allclose(prefixes[-1], prefixes[-2])


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_order_matters_unlike_the_mean(name: str) -> None:
    torch.manual_seed(3)
    state = trained_like(make_sequence(name))
    history = torch.randn(1, 4, ITEM_DIM)
    lengths = torch.tensor([4])
    reversed_history = history.flip(1)
    torch.testing.assert_close(mean_of(history, lengths), mean_of(reversed_history, lengths))
    assert not torch.allclose(state(history, lengths), state(reversed_history, lengths))


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_long_history_reads_its_last_max_len_items(name: str) -> None:
    torch.manual_seed(4)
    state = trained_like(make_sequence(name))
    history = torch.randn(2, MAX_LEN + 4, ITEM_DIM)
    out = state(history, torch.tensor([MAX_LEN + 4, MAX_LEN + 2]))
    last_full = state(history[:1, 4:], torch.tensor([MAX_LEN]))
    last_shorter = state(history[1:, 2 : MAX_LEN + 2], torch.tensor([MAX_LEN]))
    torch.testing.assert_close(out, torch.cat([last_full, last_shorter]))


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_gradients_reach_every_parameter(name: str) -> None:
    """At step 0 only the zero-initialised projection learns; after it moves, everything does."""
    torch.manual_seed(5)
    state = make_sequence(name, dropout=0.2).train()
    history, lengths = torch.randn(4, MAX_LEN, ITEM_DIM), torch.tensor([1, 2, 4, MAX_LEN])
    target = torch.randn(4, ITEM_DIM)
    optimizer = torch.optim.SGD(state.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        loss = (state(history, lengths) - target).pow(2).sum()
        loss.backward()
        optimizer.step()
    no_gradient = [n for n, p in state.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_gradient == []


@pytest.mark.parametrize("name", SEQUENCE_STATES)
def test_dropout_acts_only_while_gradients_flow(name: str) -> None:
    torch.manual_seed(6)
    state = trained_like(make_sequence(name, dropout=0.5)).train()
    history, lengths = torch.randn(3, MAX_LEN, ITEM_DIM), torch.tensor([2, 4, MAX_LEN])
    with torch.no_grad():
        first, second = state(history, lengths), state(history, lengths)
        evaluated = state.eval()(history, lengths)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, evaluated)
    state.train()
    assert not torch.allclose(state(history, lengths), state(history, lengths))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("gru", {"hidden": 0}, r"state 'gru': hidden must be at least 1, got 0"),
        ("gru", {"dropout": 1.0}, r"state 'gru': dropout must be in \[0, 1\)"),
        ("transformer", {"max_len": 0}, r"state 'transformer': max_len must be at least 1"),
        ("transformer", {"heads": 3}, r"heads \(3\) must be at least 1 and divide hidden \(8\)"),
    ],
)
def test_bad_options_are_one_clear_line(name: str, options: dict, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        make_sequence(name, **options)


# --- llm_text -------------------------------------------------------------------------------

CATALOG = [
    "Heat (1995). Genres: Action, Crime, Thriller.",
    "Alien (1979). Genres: Horror, Sci-Fi.",
    "Toy Story (1995). Genres: Animation, Children's, Comedy.",
    "Fargo (1996). Genres: Crime, Drama, Thriller.",
    "Babe (1995). Genres: Children's, Comedy, Drama.",
    "Casablanca (1942). Genres: Drama, Romance, War.",
]


class CountingEncoder(Encoder):
    """Delegates to a real encoder and records every text it is asked to embed."""

    def __init__(self, inner: Encoder) -> None:
        super().__init__(inner.config, cache_dir=inner.cache_dir, device=inner.device)
        self.inner = inner
        self.requests: list[str] = []

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.requests.extend(texts)
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> HFEncoder:
    cache = tmp_path_factory.mktemp("llm-text-cache")
    return HFEncoder(HFEncoder.Config(), cache_dir=cache, device=torch.device("cpu"))


def make_llm_text(encoder: Encoder, **options: object) -> LLMTextState:
    config = LLMTextState.Config(**{"items": 3, "item_chars": 0, **options})
    return LLMTextState(config, item_dim=384, item_text=CATALOG, encoder=encoder)


def test_llm_text_renders_the_recent_items_newest_first(minilm: HFEncoder) -> None:
    state = make_llm_text(minilm)
    assert state.render([5, 0, 1, 2]) == (
        "Recently watched: Toy Story (1995). Genres: Animation, Children's, Comedy; "
        "Alien (1979). Genres: Horror, Sci-Fi; Heat (1995). Genres: Action, Crime, Thriller."
    )
    short = make_llm_text(minilm, item_chars=20, items=2, separator=" | ", template="Seen {items}")
    assert short.render([3, 2]) == "Seen Toy Story (1995) | Fargo (1996)"
    assert list(state.parameters()) == [] and state.dim == 384


def test_llm_text_state_is_the_encoded_rendering(minilm: HFEncoder) -> None:
    encoder = CountingEncoder(minilm)
    state = make_llm_text(encoder)
    ids = torch.tensor([[0, 1, 2, 3], [4, -1, -1, -1], [-1, -1, -1, -1]])
    lengths = torch.tensor([4, 1, 0])
    out = state.forward_ids(ids, lengths)
    expected = minilm.encode([state.render([0, 1, 2, 3]), state.render([4])])
    torch.testing.assert_close(out[:2], expected)
    torch.testing.assert_close(out[2], torch.zeros(384))
    assert encoder.requests == [state.render([0, 1, 2, 3]), state.render([4])]


def test_llm_text_reads_embeddings_back_as_ids(minilm: HFEncoder) -> None:
    state = make_llm_text(minilm)
    catalog = minilm.encode(CATALOG)
    ids = torch.tensor([[5, 3, 3, 1], [2, 0, 0, 0]])
    lengths = torch.tensor([4, 1])
    from_embeddings = state(catalog[ids], lengths)
    torch.testing.assert_close(from_embeddings, state.forward_ids(ids, lengths))


def test_llm_text_memoises_recent_windows(minilm: HFEncoder) -> None:
    encoder = CountingEncoder(minilm)
    state = make_llm_text(encoder, memo_size=2)
    state.forward_ids(torch.tensor([[0, 1, 2], [0, 1, 2]]), torch.tensor([3, 3]))
    # Same last three items behind a different older one: the same text, not re-encoded.
    state.forward_ids(torch.tensor([[4, 0, 1, 2]]), torch.tensor([4]))
    assert len(encoder.requests) == 1
    state.forward_ids(torch.tensor([[3], [4]]), torch.tensor([1, 1]))  # evicts (0, 1, 2)
    state.forward_ids(torch.tensor([[0, 1, 2]]), torch.tensor([3]))
    assert len(encoder.requests) == 4


def test_llm_text_errors_are_one_clear_line(minilm: HFEncoder) -> None:
    with pytest.raises(PluginError, match=r"state 'llm_text' needs the catalog's item texts"):
        LLMTextState(LLMTextState.Config(), item_dim=384)
    with pytest.raises(PluginError, match=r"template must contain '\{items\}'"):
        make_llm_text(minilm, template="Recently watched.")
    with pytest.raises(MarlrecError, match=r"unknown item id 9 in a history"):
        make_llm_text(minilm).forward_ids(torch.tensor([[1, 9]]), torch.tensor([2]))
    with pytest.raises(PluginError, match=r"encoder gives 384-d vectors but the items are 8-d"):
        LLMTextState(LLMTextState.Config(), item_dim=8, item_text=CATALOG, encoder=minilm)(
            torch.zeros(1, 1, 8), torch.tensor([1])
        )


def test_llm_text_drives_the_slate_environment(small_pipeline: Pipeline) -> None:
    """Built as the pipeline would with `item_text` and `encoder`; the env retrieves with it."""
    p = small_pipeline
    encoder = HFEncoder(HFEncoder.Config(), cache_dir=Path(str(p.cfg.cache_dir)), device=p.device)
    state = LLMTextState(
        LLMTextState.Config(),
        item_dim=p.item_emb.shape[1],
        item_text=p.data.item_text,
        encoder=encoder,
    )
    env = SlateEnvironment(p.env.config, ctx=dataclasses.replace(p.env.ctx, state=state))
    aec = env.make()
    aec.reset(seed=0)
    observation = aec.observe(aec.agent_selection)["observation"]
    history = np.asarray(aec.history)
    expected = state.forward_ids(torch.as_tensor(history)[None], torch.tensor([len(history)]))
    layout = env.spec.layout
    torch.testing.assert_close(torch.as_tensor(observation[: layout.state_dim]), expected[0])


# --- trained together with the agents -------------------------------------------------------


def test_gru_state_trains_with_the_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny run through the composed config changes every parameter of the GRU state."""
    initial: dict[str, torch.Tensor] = {}
    build = marlrec.run.build

    def build_and_record(cfg: DictConfig, **options: Any) -> Pipeline:
        pipeline = build(cfg, **options)
        initial.update(
            {k: v.detach().clone() for k, v in pipeline.env.ctx.state.state_dict().items()}
        )
        assert isinstance(pipeline.env.ctx.state, GRUState)
        return pipeline

    monkeypatch.setattr(marlrec.run, "build", build_and_record)
    overrides = [
        "state=gru",
        "state.hidden=8",
        "agent.hidden=16",
        "trainer.max_epochs=1",
        "trainer.epoch_num_env_steps=200",
        "trainer.collect_num_env_steps=48",
        "trainer.batch_size=32",
        "trainer.test_episodes=2",
        "eval.sessions=5",
        "baseline=[random]",
    ]
    marlrec.run.train(compose_config(SMALL + overrides), tmp_path)
    assert initial and not initial["output.weight"].any()
    agent = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["agent"]
    actors, critics = agent["actors"], agent["critics"]  # the default agent, mappo
    for key, before in initial.items():
        after = actors[f"0.state_model.{key}"]
        assert not torch.equal(after, before), f"{key} did not change in training"
        for shared in (actors[f"1.state_model.{key}"], critics[f"0.state_model.{key}"]):
            torch.testing.assert_close(shared, after)  # one model, shared
