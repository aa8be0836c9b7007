from __future__ import annotations

from pathlib import Path

import pytest
import torch

from marlrec.encoders.tfidf import TfidfEncoder
from marlrec.pipeline import build
from marlrec.registry import PluginError
from tests.conftest import SMALL, compose_config

CPU = torch.device("cpu")
TEXTS = [
    "Astronauts pilot a starship to a distant planet.",
    "A starship crew reaches a distant planet and an alien signal.",
    "A chef bakes bread in a family bakery.",
    "A family bakery where a chef bakes pastries.",
]


def make(tmp_path: Path, **options: object) -> TfidfEncoder:
    return TfidfEncoder(TfidfEncoder.Config(**options), cache_dir=tmp_path, device=CPU)


def test_shape_dtype_and_unit_norm(tmp_path: Path) -> None:
    out = make(tmp_path).encode(TEXTS)
    assert out.shape == (len(TEXTS), 384)
    assert out.dtype == torch.float32 and out.device == CPU
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(TEXTS)))
    assert make(tmp_path, dim=16).encode(TEXTS).shape == (len(TEXTS), 16)


def test_empty_inputs(tmp_path: Path) -> None:
    encoder = make(tmp_path)
    assert encoder.encode([]).shape == (0, 384)
    out = encoder.encode(["", "!!!", "bread"])
    assert torch.equal(out[:2], torch.zeros(2, 384))  # no word, no feature: a zero vector
    assert out[2].norm() == pytest.approx(1.0)


def test_deterministic_across_encoders_and_processes(tmp_path: Path) -> None:
    first = make(tmp_path).encode(TEXTS)
    assert torch.equal(make(tmp_path).encode(TEXTS), first)
    # Three equally weighted words land in fixed buckets with fixed signs: hashing does not
    # depend on Python's per-process string hash seed. (Golden value of this implementation.)
    (vector,) = make(tmp_path, dim=16).encode(["space ship alien"])
    expected = torch.zeros(16)
    expected[[3, 9, 14]] = torch.tensor([-1.0, 1.0, 1.0]) / 3**0.5
    torch.testing.assert_close(vector, expected)


def test_similar_texts_are_closer_than_unrelated_ones(tmp_path: Path) -> None:
    space_a, space_b, food_a, food_b = make(tmp_path).encode(TEXTS)
    across = max(space_a @ food_a, space_a @ food_b, space_b @ food_a, space_b @ food_b)
    assert space_a @ space_b > across + 0.2
    assert food_a @ food_b > across + 0.2


def test_rare_words_weigh_more_than_common_ones(tmp_path: Path) -> None:
    # "the" is in every text, "alien" in one: sharing "alien" must count more than sharing "the".
    texts = ["the alien", "the alien ship", "the cake", "the bread", "the film"]
    alien, alien_ship, cake, *_ = make(tmp_path).encode(texts)
    assert alien_ship @ alien > alien_ship @ cake + 0.3


def test_features_of_word_and_character_ngrams(tmp_path: Path) -> None:
    assert make(tmp_path, word_ngrams=2).features("A b, c") == ["a", "b", "c", "a b", "b c"]
    assert make(tmp_path, char_ngrams=3).features("Cat") == ["cat", "#<ca", "#cat", "#at>"]


def test_character_ngrams_relate_word_forms(tmp_path: Path) -> None:
    words_only = make(tmp_path).encode(["starships", "starship"])
    with_chars = make(tmp_path, char_ngrams=3).encode(["starships", "starship"])
    assert words_only[0] @ words_only[1] == 0.0
    assert with_chars[0] @ with_chars[1] > 0.5


@pytest.mark.parametrize(
    ("options", "message"),
    [({"dim": 0}, "dim must be at least 1"), ({"word_ngrams": 0}, "word_ngrams must be")],
)
def test_bad_options_are_one_line_plugin_errors(
    tmp_path: Path, options: dict[str, int], message: str
) -> None:
    with pytest.raises(PluginError, match=message) as info:
        make(tmp_path, **options)
    assert "\n" not in str(info.value)


def test_encoder_tfidf_in_a_composed_pipeline(offline_cache: Path) -> None:
    pipeline = build(compose_config([*SMALL, "encoder=tfidf", "encoder.dim=64"]))
    assert pipeline.item_emb.shape == (pipeline.data.n_items, 64)
    torch.testing.assert_close(
        pipeline.item_emb.norm(dim=1).cpu(), torch.ones(pipeline.data.n_items)
    )
