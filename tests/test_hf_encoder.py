from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
import torch
import transformers

from marlrec import registry
from marlrec.encoders import hf
from marlrec.encoders.hf import HFEncoder, pool
from marlrec.pipeline import sections
from marlrec.registry import PluginError, build_config
from marlrec.testing import Architecture, save_tiny_model
from tests.conftest import compose_config

TEXTS = ["the cat sat on the mat", "a space ship", "love story", "the dog ran fast", "heist"]
WORDS = sorted({word for text in [*TEXTS, "crime story"] for word in text.split()})
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Saves each (architecture, padding side) once per module, on first request."""
    saved: dict[tuple[str, str], Path] = {}

    def get(architecture: Architecture, padding_side: Literal["left", "right"] = "right") -> Path:
        key = (architecture, padding_side)
        if key not in saved:
            folder = tmp_path_factory.mktemp(f"tiny-{architecture}-{padding_side}")
            saved[key] = save_tiny_model(architecture, folder, WORDS, padding_side=padding_side)
        return saved[key]

    return get


@pytest.fixture(scope="module")
def tiny_model(tiny_models: Callable[..., Path]) -> Path:
    """A randomly initialised two-layer BERT with a word-level vocabulary, saved to disk."""
    return tiny_models("bert")


def make(model: Path | str, cache_dir: Path, **options: object) -> HFEncoder:
    return HFEncoder(HFEncoder.Config(model=str(model), **options), cache_dir=cache_dir, device=CPU)


def test_shape_dtype_and_unit_norm(tiny_model: Path, tmp_path: Path) -> None:
    out = make(tiny_model, tmp_path).encode(TEXTS)
    assert out.shape == (len(TEXTS), 32)
    assert out.dtype == torch.float32
    assert out.device.type == "cpu"
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(TEXTS)))


def test_without_normalize_norms_differ_from_one(tiny_model: Path, tmp_path: Path) -> None:
    out = make(tiny_model, tmp_path, normalize=False).encode(TEXTS)
    assert not torch.allclose(out.norm(dim=1), torch.ones(len(TEXTS)))


def test_text_alone_equals_text_in_a_padded_batch(tiny_model: Path, tmp_path: Path) -> None:
    batch = make(tiny_model, tmp_path / "a", batch_size=64).encode(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = make(tiny_model, tmp_path / f"b{i}").encode([text])
        torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=0)


def test_output_follows_input_order(tiny_model: Path, tmp_path: Path) -> None:
    forward = make(tiny_model, tmp_path / "a", batch_size=2).encode(TEXTS)
    backward = make(tiny_model, tmp_path / "b", batch_size=2).encode(TEXTS[::-1])
    torch.testing.assert_close(backward, forward.flip(0), atol=1e-5, rtol=0)


def test_cached_texts_do_not_load_the_model(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make(tiny_model, tmp_path)
    expected = first.encode(TEXTS)
    assert (first.last_hits, first.last_misses) == (0, len(TEXTS))
    assert list((tmp_path / "embeddings").glob("*.npz")) == [first.cache_file]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although every text is cached")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    second = make(tiny_model, tmp_path)
    assert torch.equal(second.encode(TEXTS), expected)
    assert (second.last_hits, second.last_misses) == (len(TEXTS), 0)


def test_changed_text_is_the_only_one_reencoded(tiny_model: Path, tmp_path: Path) -> None:
    before = make(tiny_model, tmp_path).encode(TEXTS)
    encoder = make(tiny_model, tmp_path)
    after = encoder.encode([*TEXTS[:-1], "crime story"])
    assert (encoder.last_hits, encoder.last_misses) == (len(TEXTS) - 1, 1)
    torch.testing.assert_close(after[:-1], before[:-1])
    assert not torch.allclose(after[-1], before[-1])
    encoder.encode([*TEXTS, "crime story"])  # both versions now live in the cache
    assert encoder.last_misses == 0


def test_unreadable_cache_file_is_rebuilt(tiny_model: Path, tmp_path: Path) -> None:
    encoder = make(tiny_model, tmp_path)
    expected = encoder.encode(TEXTS)
    encoder.cache_file.write_bytes(b"not an npz")
    torch.testing.assert_close(encoder.encode(TEXTS), expected)
    assert encoder.last_misses == len(TEXTS)
    encoder.encode(TEXTS)
    assert encoder.last_hits == len(TEXTS)


def test_empty_input_gives_an_empty_matrix(tiny_model: Path, tmp_path: Path) -> None:
    assert make(tiny_model, tmp_path).encode([]).shape == (0, 32)


def test_options_that_change_outputs_use_separate_caches(tiny_model: Path, tmp_path: Path) -> None:
    normalized = make(tiny_model, tmp_path)
    raw = make(tiny_model, tmp_path, normalize=False)
    shorter = make(tiny_model, tmp_path, max_length=4)
    assert len({normalized.identity, raw.identity, shorter.identity}) == 3
    normalized.encode(TEXTS)
    raw.encode(TEXTS)
    assert raw.last_misses == len(TEXTS)


def test_missing_model_is_a_one_line_plugin_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(PluginError, match="no-such-model") as info:
        make(missing, tmp_path)
    assert "\n" not in str(info.value)
    assert "local" in str(info.value)


def test_default_model_separates_topics(tmp_path: Path) -> None:
    """The bundled all-MiniLM-L6-v2 (a few seconds on CPU) puts same-topic texts closer."""
    encoder = HFEncoder(HFEncoder.Config(), cache_dir=tmp_path, device=CPU)
    space_a, space_b, food_a, food_b = encoder.encode(
        [
            "Astronauts pilot a starship to a distant planet.",
            "A space station crew discovers an alien signal from another galaxy.",
            "A chef bakes bread and pastries in a family bakery.",
            "A cook shares recipes for spicy street food.",
        ]
    )
    assert encoder.last_misses == 4
    across = max(space_a @ food_a, space_a @ food_b, space_b @ food_a, space_b @ food_b)
    assert space_a @ space_b > across + 0.1
    assert food_a @ food_b > across + 0.1


DECODERS: list[Architecture] = ["gpt2", "llama"]


@pytest.mark.parametrize(
    ("architecture", "kind", "pooling"),
    [
        ("bert", "encoder", "mean"),
        ("gpt2", "decoder", "last"),
        ("llama", "decoder", "last"),
        ("t5", "encoder-decoder", "mean"),
    ],
)
def test_auto_pooling_follows_the_architecture(
    tiny_models: Callable[..., Path],
    tmp_path: Path,
    architecture: Architecture,
    kind: str,
    pooling: str,
) -> None:
    encoder = make(tiny_models(architecture), tmp_path)
    assert (encoder.architecture, encoder.pooling) == (kind, pooling)
    out = encoder.encode(TEXTS)
    assert out.shape == (len(TEXTS), 32)
    assert torch.isfinite(out).all()


def test_model_given_as_encoder_model_override_loads_by_path(
    tiny_models: Callable[..., Path], tmp_path: Path
) -> None:
    path = tiny_models("gpt2")
    (section,) = sections(compose_config([f"encoder.model={path}"]), "encoder")
    encoder = registry.create("encoder", section, cache_dir=tmp_path, device=CPU)
    assert isinstance(encoder, HFEncoder)
    assert encoder.model_path == path.resolve()
    assert encoder.encode(TEXTS).shape == (len(TEXTS), 32)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("architecture", DECODERS)
def test_decoder_text_alone_equals_text_in_a_padded_batch(
    tiny_models: Callable[..., Path],
    tmp_path: Path,
    architecture: Architecture,
    pooling: str,
    padding_side: str,
) -> None:
    path = tiny_models(architecture, padding_side)
    batched = make(path, tmp_path / "batch", pooling=pooling)
    tokenizer, _ = batched.load()
    assert tokenizer.padding_side == padding_side
    assert tokenizer.pad_token == tokenizer.eos_token  # these tokenizers ship without one
    batch = batched.encode(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = make(path, tmp_path / f"alone{i}", pooling=pooling).encode([text])
        torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=0)


def test_encoder_only_models_pad_on_the_right_whatever_their_tokenizer_says(
    tiny_models: Callable[..., Path], tmp_path: Path
) -> None:
    encoder = make(tiny_models("bert", "left"), tmp_path / "a", pooling="cls")
    assert encoder.load()[0].padding_side == "right"
    batch = encoder.encode(TEXTS)
    alone = make(tiny_models("bert", "left"), tmp_path / "b", pooling="cls").encode(TEXTS[-1:])
    torch.testing.assert_close(alone[0], batch[-1], atol=1e-5, rtol=0)


def test_pool_reads_first_and_last_real_tokens_on_either_side() -> None:
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)  # token t of row r: 4r + t
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(hidden, right, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool(hidden, right, "last").flatten().tolist() == [2.0, 5.0]
    assert pool(hidden, left, "cls").flatten().tolist() == [1.0, 6.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, left, "mean").flatten().tolist() == [2.0, 6.5]


def test_pool_ignores_nan_in_padding_and_zeroes_rows_without_tokens() -> None:
    hidden = torch.tensor([[[float("nan")], [2.0]], [[float("nan")], [float("nan")]]])
    mask = torch.tensor([[0, 1], [0, 0]])
    for pooling in ("mean", "cls", "last"):
        assert pool(hidden, mask, pooling).flatten().tolist() == [2.0, 0.0]  # type: ignore[arg-type]


def test_text_without_tokens_gets_a_zero_vector(
    tiny_models: Callable[..., Path], tmp_path: Path
) -> None:
    encoder = make(tiny_models("gpt2"), tmp_path)  # GPT-2 adds no BOS: "" has no token at all
    out = encoder.encode(["", "heist"])
    assert torch.equal(out[0], torch.zeros(32))
    assert out[1].norm() > 0.5
    assert torch.equal(make(tiny_models("gpt2"), tmp_path / "alone").encode([""]), out[:1])


def test_cls_and_mean_pooling_differ(tiny_model: Path, tmp_path: Path) -> None:
    cls = make(tiny_model, tmp_path, pooling="cls").encode(TEXTS)
    mean = make(tiny_model, tmp_path, pooling="mean").encode(TEXTS)
    assert cls.shape == mean.shape
    assert not torch.allclose(cls, mean, atol=1e-3)


@pytest.mark.parametrize("architecture", ["bert", "llama"])
def test_bfloat16_runs_and_stays_close_to_float32(
    tiny_models: Callable[..., Path], tmp_path: Path, architecture: Architecture
) -> None:
    path = tiny_models(architecture)
    full = make(path, tmp_path).encode(TEXTS)
    half = make(path, tmp_path, dtype="bfloat16")
    assert half.load()[1].dtype == torch.bfloat16
    out = half.encode(TEXTS)
    assert half.last_misses == len(TEXTS)  # another dtype: another cache
    assert out.dtype == torch.float32
    assert (out * full).sum(1).min() > 0.98  # cosine: unit vectors, bfloat16 rounding only
    assert not torch.equal(out, full)


def test_pooling_change_invalidates_the_cache(tiny_model: Path, tmp_path: Path) -> None:
    mean = make(tiny_model, tmp_path, pooling="mean")
    mean.encode(TEXTS)
    auto = make(tiny_model, tmp_path, pooling="auto")  # BERT: auto is mean, so the same cache
    auto.encode(TEXTS)
    assert (auto.identity, auto.last_hits) == (mean.identity, len(TEXTS))
    cls = make(tiny_model, tmp_path, pooling="cls")
    cls.encode(TEXTS)
    assert (cls.last_hits, cls.last_misses) == (0, len(TEXTS))
    assert cls.cache_file != mean.cache_file


def test_changed_text_in_a_decoder_cache_is_the_only_one_reencoded(
    tiny_models: Callable[..., Path], tmp_path: Path
) -> None:
    path = tiny_models("llama")
    before = make(path, tmp_path).encode(TEXTS)
    encoder = make(path, tmp_path)
    after = encoder.encode(["crime story", *TEXTS[1:]])
    assert (encoder.last_hits, encoder.last_misses) == (len(TEXTS) - 1, 1)
    assert torch.equal(after[1:], before[1:])
    assert not torch.allclose(after[0], before[0])


def test_model_files_changing_invalidates_the_cache(tmp_path: Path) -> None:
    path = save_tiny_model("bert", tmp_path / "model", WORDS, seed=0)
    first = make(path, tmp_path / "cache")
    first.encode(TEXTS)
    save_tiny_model("bert", path, WORDS, seed=1, hidden_size=48)  # retrained in place
    second = make(path, tmp_path / "cache")
    assert second.identity != first.identity
    assert second.encode(TEXTS).shape == (len(TEXTS), 48)
    assert second.last_misses == len(TEXTS)


def test_interrupted_encode_keeps_finished_batches(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf, "CHECKPOINT_SECONDS", -1.0)  # save after every batch
    encoder = make(tiny_model, tmp_path, batch_size=2)
    forward = encoder.forward
    calls = []

    def fail_third_batch(*args: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return forward(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(encoder, "forward", fail_third_batch)
    with pytest.raises(KeyboardInterrupt):
        encoder.encode(TEXTS)
    resumed = make(tiny_model, tmp_path, batch_size=2)
    resumed.encode(TEXTS)
    assert (resumed.last_hits, resumed.last_misses) == (4, 1)


def test_explicit_cpu_device_and_bad_devices(tiny_model: Path, tmp_path: Path) -> None:
    assert make(tiny_model, tmp_path, device="cpu").device == CPU
    with pytest.raises(PluginError, match="device 'nonsense'") as info:
        make(tiny_model, tmp_path, device="nonsense")
    assert "\n" not in str(info.value)
    if not torch.cuda.is_available():
        with pytest.raises(PluginError, match="CUDA"):
            make(tiny_model, tmp_path, device="cuda")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"max_length": 0}, "max_length must be at least 1"),
        ({"revision": "v1"}, "revision 'v1' applies to hub model names"),
    ],
)
def test_bad_options_are_one_line_plugin_errors(
    tiny_model: Path, tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(PluginError, match=message) as info:
        make(tiny_model, tmp_path, **options)
    assert "\n" not in str(info.value)


def test_folder_without_a_model_config_is_a_plugin_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PluginError, match=r"no readable config\.json"):
        make(tmp_path / "empty", tmp_path)


def test_bad_pooling_in_yaml_is_rejected_by_the_registry() -> None:
    with pytest.raises(PluginError, match=r"encoder\.pooling"):
        build_config("encoder", "hf", HFEncoder.Config, {"pooling": "max"})


@pytest.mark.parametrize(
    ("dtype", "error", "message"),
    [
        ("float16", RuntimeError("\"LayerNormKernelImpl\" not implemented for 'Half'"), "float32"),
        ("float32", torch.OutOfMemoryError("CUDA out of memory"), "lower encoder.batch_size"),
    ],
)
def test_device_failures_are_one_line_plugin_errors(
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dtype: str,
    error: RuntimeError,
    message: str,
) -> None:
    encoder = make(tiny_model, tmp_path, dtype=dtype)
    _, model = encoder.load()

    def fail(**inputs: object) -> None:
        raise error

    monkeypatch.setattr(model, "forward", fail)
    with pytest.raises(PluginError, match=message) as info:
        encoder.encode(TEXTS)
    assert "\n" not in str(info.value)


def test_a_fully_cached_encoder_never_imports_transformers(
    tiny_models: Callable[..., Path], tmp_path: Path
) -> None:
    """transformers (seconds of imports) waits until a model is read: composing a config (which
    imports every plugin) and a run whose embeddings are all cached never import it."""
    for architecture in ("bert", "gpt2"):
        make(tiny_models(architecture), tmp_path).encode(TEXTS)
    code = (
        "import sys, torch\n"
        "from marlrec.encoders.hf import HFEncoder\n"
        "for model in sys.argv[2:]:\n"
        "    e = HFEncoder(HFEncoder.Config(model=model), cache_dir=sys.argv[1],\n"
        "                  device=torch.device('cpu'))\n"
        "    e.encode(" + repr(TEXTS) + ")\n"
        "    print(e.architecture, e.pooling, e.last_misses)\n"
        "print('transformers' in sys.modules)\n"
    )
    models = [str(tiny_models(a)) for a in ("bert", "gpt2")]
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), *models],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["encoder mean 0", "decoder last 0", "False"]
