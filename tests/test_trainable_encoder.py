"""`encoder.trainable=lora|full`: the language model learns with the agents in the same run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from marlrec import registry
from marlrec.pipeline import Pipeline, build
from marlrec.registry import MarlrecError, PluginError
from marlrec.testing import Architecture, save_tiny_model
from marlrec.training.imitation import imitation_loss, imitation_optimizer, logged_source
from tests.conftest import SMALL, compose_config
from tests.test_resume import Interrupted, _fit, _run, _weights, flatten

TINY_DATA = ["data.n_users=40", "data.n_items=60"]


@pytest.fixture(scope="module")
def tiny_models(
    tmp_path_factory: pytest.TempPathFactory, small_pipeline: Pipeline
) -> Callable[..., Path]:
    """A tiny random model per architecture whose vocabulary covers the synthetic catalog."""
    texts = small_pipeline.data.item_text
    words = sorted({word.lower() for text in texts for word in text.split()})
    saved: dict[str, Path] = {}

    def get(architecture: Architecture) -> Path:
        if architecture not in saved:
            folder = tmp_path_factory.mktemp(f"tiny-{architecture}")
            saved[architecture] = save_tiny_model(architecture, folder, words)
        return saved[architecture]

    return get


def pipeline(model: Path, *overrides: str) -> Pipeline:
    return build(
        compose_config(
            [
                *SMALL,
                *TINY_DATA,
                f"encoder.model={model}",
                "agent=mappo",
                "agent.hidden=16",
                *overrides,
            ]
        )
    )


def imitation_step(p: Pipeline, optimizer: torch.optim.Optimizer) -> None:
    source = logged_source(p.env, p.data.train_histories, 0)
    batch = source.choices(np.arange(min(32, len(source))), np.random.default_rng(0))
    optimizer.zero_grad()
    imitation_loss(p.agent, batch)[0].backward()
    optimizer.step()


@pytest.mark.parametrize("architecture", ["bert", "gpt2", "llama"])
def test_lora_learns_from_the_agents_loss_and_leaves_the_base_weights(
    tiny_models: Callable[..., Path], architecture: Architecture
) -> None:
    p = pipeline(
        tiny_models(architecture),
        "encoder.trainable=lora",
        "encoder.refresh_every=1",
        "retrieval=content",  # retrieval over the text embeddings follows the refreshes
    )
    tower = p.env.ctx.item_tower
    assert tower is not None and tower.table is p.item_emb
    adapters = {n: t for n, t in tower.model.named_parameters() if t.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    base = {n: t.detach().clone() for n, t in tower.model.named_parameters() if not t.requires_grad}
    table = p.item_emb.clone()
    optimizer = imitation_optimizer(p.agent, 1e-2)
    imitation_step(p, optimizer)  # LoRA's B starts at zero: A's gradient needs a step first
    imitation_step(p, optimizer)
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in adapters.values())
    frozen = dict(tower.model.named_parameters())
    assert all(torch.equal(frozen[n], t) for n, t in base.items())
    # refresh_every=1: the run's table (retrieval's, states', the agents') follows the weights
    assert tower.updates == 2 and tower.refreshes == 2
    assert not torch.equal(p.item_emb, table)
    retriever_unit = p.env.ctx.retriever.item_unit  # type: ignore[attr-defined]
    assert torch.allclose(retriever_unit, torch.nn.functional.normalize(p.item_emb, dim=-1))


@pytest.mark.parametrize("embeddings", ["trained", "frozen"])
def test_content_retrieval_reads_the_trained_or_the_frozen_table(
    tiny_models: Callable[..., Path], embeddings: str
) -> None:
    p = pipeline(
        tiny_models("bert"),
        "encoder.trainable=lora",
        "encoder.refresh_every=1",
        "retrieval=content",
        f"retrieval.embeddings={embeddings}",
    )
    retriever: Any = p.env.ctx.retriever
    initial = p.item_emb.clone()
    core: Any = p.env.core  # type: ignore[attr-defined]
    histories = core.pack([p.data.train_histories[u] for u in range(8)])
    before = retriever.top(core.states(histories), histories, 5)
    optimizer = imitation_optimizer(p.agent, 1e-2)
    for _ in range(3):  # LoRA's B starts at zero: the table moves from the second step on
        imitation_step(p, optimizer)
    tower = p.env.ctx.item_tower
    assert tower is not None and tower.refreshes == 3
    assert not torch.allclose(p.item_emb, initial)  # the agents' table was re-encoded
    read = initial if embeddings == "frozen" else p.item_emb
    assert torch.allclose(retriever.item_unit, torch.nn.functional.normalize(read, dim=-1))
    # the pool: frozen retrieval answers as before the refreshes, whatever the states now say
    after = retriever.top(core.states(histories), histories, 5)
    if embeddings == "frozen":
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    else:
        assert not torch.equal(before[1], after[1])


def test_frozen_retrieval_over_a_frozen_encoder_retrieves_as_trained(
    small_pipeline: Pipeline,
) -> None:
    """With nothing trained, `frozen` (its own mean query) answers as `trained` over the mean
    state: the option changes only what a trainable encoder's refreshes do."""
    from marlrec.retrieval.content import ContentConfig, ContentRetriever

    p, core = small_pipeline, small_pipeline.env.core  # type: ignore[attr-defined]
    histories = core.pack([p.data.train_histories[u] for u in range(16)])
    states = p.env.ctx.state.from_histories(histories, p.item_emb)
    found = [
        ContentRetriever(ContentConfig(embeddings=e), data=p.data, item_emb=p.item_emb).top(
            states, histories, 10
        )
        for e in ("trained", "frozen")
    ]
    assert torch.equal(found[0][0], found[1][0])
    assert torch.allclose(found[0][1], found[1][1], atol=1e-6)


def test_content_embeddings_option_is_checked(tiny_models: Callable[..., Path]) -> None:
    with pytest.raises(PluginError) as caught:
        pipeline(tiny_models("bert"), "retrieval=content", "retrieval.embeddings=fine")
    message = str(caught.value)
    assert "retrieval.embeddings" in message and "'fine'" in message and "\n" not in message
    assert "'trained', 'frozen'" in message


def test_full_fine_tuning_trains_every_weight(tiny_models: Callable[..., Path]) -> None:
    p = pipeline(tiny_models("bert"), "encoder.trainable=full")
    tower = p.env.ctx.item_tower
    assert tower is not None
    assert tower.trainable_parameters == sum(t.numel() for t in tower.model.parameters())
    before = {n: t.detach().clone() for n, t in tower.model.named_parameters()}
    imitation_step(p, imitation_optimizer(p.agent, 1e-2))
    changed = [n for n, t in tower.model.named_parameters() if not torch.equal(t, before[n])]
    assert any("encoder.layer" in n for n in changed)


def test_frozen_encoder_keeps_the_cached_path(tiny_models: Callable[..., Path]) -> None:
    p = pipeline(tiny_models("bert"))
    assert p.env.ctx.item_tower is None
    encoder = registry.create(
        "encoder",
        {"name": "hf", "model": str(tiny_models("bert"))},
        cache_dir=Path(str(p.cfg.cache_dir)),
        device=p.device,
    )
    encoder.encode(p.data.item_text)
    assert encoder.last_misses == 0  # every text came from the disk cache
    names = [n for n, _ in p.agent.actors.named_parameters()]  # type: ignore[attr-defined]
    assert names and not any("item_tower" in n for n in names)


def test_checkpoint_holds_adapters_and_table_and_restores_them(
    tiny_models: Callable[..., Path],
) -> None:
    model = tiny_models("gpt2")
    trained = pipeline(model, "encoder.trainable=lora", "encoder.refresh_every=1")
    optimizer = imitation_optimizer(trained.agent, 1e-2)
    for _ in range(2):
        imitation_step(trained, optimizer)
    state = trained.agent.state_dict()
    keys = [k for k in state["actors"] if "item_tower" in k]
    assert any("lora_A" in k for k in keys) and any(k.endswith("item_tower.table") for k in keys)
    assert not any("base_layer" in k or k.endswith("wte.weight") for k in keys)
    fresh = pipeline(model, "encoder.trainable=lora", "encoder.refresh_every=1")
    assert not torch.equal(fresh.item_emb, trained.item_emb)
    fresh.agent.load_state_dict(state)
    assert torch.equal(fresh.item_emb, trained.item_emb)
    tower, source = fresh.env.ctx.item_tower, trained.env.ctx.item_tower
    assert tower is not None and source is not None and tower.updates == source.updates == 2
    adapters = dict(source.model.named_parameters())
    assert all(torch.equal(t, adapters[n]) for n, t in tower.model.named_parameters())


@pytest.mark.slow  # three short epochs three times (about 35 s); the checkpoint test runs in CI
def test_lora_run_resumes_exactly(tiny_models: Callable[..., Path], tmp_path: Path) -> None:
    """Each run builds its own pipeline from the cached frozen embeddings, as a new process."""
    model = tiny_models("bert")

    def fresh() -> Pipeline:
        return pipeline(model, "encoder.trainable=lora", "encoder.refresh_every=3")

    torch.manual_seed(0)
    np.random.seed(0)
    unbroken = fresh()
    first, summary = _fit(unbroken, "mappo", _run(tmp_path, "full", resume=False))

    def interrupt(epoch: int) -> None:
        if epoch == 2:
            raise Interrupted

    torch.manual_seed(0)
    np.random.seed(0)
    with pytest.raises(Interrupted):
        _fit(fresh(), "mappo", _run(tmp_path, "cut", False, save_checkpoint=interrupt))
    torch.manual_seed(123)
    np.random.seed(123)
    resumed = fresh()
    second, again = _fit(resumed, "mappo", _run(tmp_path, "cut", resume=True))
    assert again["train_env_steps"] == summary["train_env_steps"]
    expected, weights = _weights(first), _weights(second)
    assert any("lora_B" in k for k in expected) and expected.keys() == weights.keys()
    assert all(torch.equal(expected[k], weights[k]) for k in expected)
    assert torch.equal(resumed.item_emb, unbroken.item_emb)
    tower = unbroken.env.ctx.item_tower
    assert tower is not None and tower.refreshes > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("encoder.lora.rank=4", "unknown key 'lora.rank'"),
        ("encoder.lora.r=0", "lora.r must be a whole number of at least 1"),
        ("encoder.lora.dropout=1.5", "lora.dropout must be in [0, 1)"),
        ("encoder.refresh_every=0", "refresh_every must be at least 1"),
        ("encoder.dtype=bfloat16", "trains float32 weights"),
        ("encoder.lora.target_modules=[nothing_here]", "cannot add LoRA adapters"),
        ("trainer.vector_env=subproc", "needs env copies in this process"),
    ],
)
def test_bad_trainable_options_are_one_line(
    tiny_models: Callable[..., Path], override: str, message: str
) -> None:
    with pytest.raises((PluginError, MarlrecError)) as caught:
        pipeline(tiny_models("bert"), "encoder.trainable=lora", override)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_trainable_is_a_documented_option() -> None:
    section: Any = OmegaConf.to_container(compose_config([]).encoder)
    assert section["trainable"] == "frozen" and section["lora"]["r"] == 8


@pytest.mark.slow  # a `marlrec train` process (about 30 s)
def test_a_lora_run_is_served_with_its_trained_embeddings(
    tiny_models: Callable[..., Path], tmp_path: Path, offline_cache: Path
) -> None:
    from marlrec.agents import checkpoint_path
    from marlrec.recommend import embed_texts, load_run, text_encoder
    from tests.test_serve import TINIEST
    from tests.test_train_e2e import marlrec

    model = tiny_models("bert")
    options = [f"encoder.model={model}", "encoder.trainable=lora", "encoder.refresh_every=2"]
    marlrec(
        "train", *TINIEST, *options, f"hydra.run.dir={tmp_path}", cache=offline_cache, cwd=tmp_path
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["encoder"]["trainable"] == "lora" and metrics["encoder"]["refreshes"] > 0
    assert metrics["encoder"]["seconds_per_update"] > 0 and metrics["encoder"]["peak_memory_mb"] > 0
    loaded = load_run(tmp_path)
    tables = [
        value
        for which in ("best", "last")
        if checkpoint_path(tmp_path, which).is_file()
        for key, value in flatten(
            torch.load(checkpoint_path(tmp_path, which), map_location="cpu", weights_only=False)
        ).items()
        if key.endswith("item_tower.table.")
    ]
    assert tables and any(torch.equal(loaded.item_emb, table) for table in tables)
    frozen = text_encoder(loaded).encode(loaded.data.item_text)  # the cached, untrained path
    assert not torch.allclose(loaded.item_emb, frozen)
    # a text query is encoded by the trained weights, as the catalog was
    text = loaded.data.item_text[0]
    assert torch.allclose(
        embed_texts(loaded, text_encoder(loaded), [text])[0], loaded.item_emb[0], atol=1e-5
    )
