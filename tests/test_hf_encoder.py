from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel, BertTokenizer

from marlrec.encoders import hf
from marlrec.encoders.hf import HFEncoder
from marlrec.registry import PluginError, build_config

TEXTS = ["the cat sat on the mat", "a space ship", "love story", "the dog ran fast", "heist"]
WORDS = sorted({word for text in [*TEXTS, "crime story"] for word in text.split()})
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-layer BERT with a word-level vocabulary, saved to disk."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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

    monkeypatch.setattr(hf.AutoModel, "from_pretrained", refuse)
    monkeypatch.setattr(hf.AutoTokenizer, "from_pretrained", refuse)
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


def test_yaml_defaults_match_config() -> None:
    path = Path(__file__).parents[1] / "marlrec" / "conf" / "encoder" / "hf.yaml"
    section = yaml.safe_load(path.read_text())
    assert section.pop("name") == "hf"
    assert build_config("encoder", "hf", HFEncoder.Config, section) == HFEncoder.Config()
