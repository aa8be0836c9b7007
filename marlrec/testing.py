"""Tiny randomly initialised transformers, saved like real ones, for offline tests and benchmarks.

Each architecture gets a word-level tokenizer over the given words, shaped like the real family's:
BERT wraps texts in [CLS] ... [SEP] and pads with [PAD]; GPT-2 adds no special tokens and has no
pad token; Llama prepends a BOS token and has no pad token either; T5 (encoder-decoder) appends
EOS and pads with [PAD]. The saved folder loads through
`AutoTokenizer`/`AutoModel.from_pretrained`, so `encoder.model=<folder>` works as for any model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

Architecture = Literal["bert", "gpt2", "llama", "t5"]
ARCHITECTURES: tuple[Architecture, ...] = ("bert", "gpt2", "llama", "t5")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]")
PAD, UNK, CLS, SEP, BOS, EOS = range(len(SPECIAL_TOKENS))


def save_tiny_model(
    architecture: Architecture,
    path: Path,
    words: Iterable[str],
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    padding_side: Literal["left", "right"] = "right",
    seed: int = 0,
) -> Path:
    """Build a random `architecture` model with a tokenizer knowing `words`; save both to `path`."""
    vocab = list(dict.fromkeys([*SPECIAL_TOKENS, *(w.lower() for w in words)]))
    torch.manual_seed(seed)
    model = AutoModel.from_config(_config(architecture, len(vocab), hidden_size, num_layers))
    model.save_pretrained(path)
    _tokenizer(architecture, vocab, padding_side).save_pretrained(path)
    return Path(path)


def _config(architecture: Architecture, vocab_size: int, hidden: int, layers: int) -> object:
    # Small vocabularies need explicit special-token ids: the defaults point past their end.
    shared = {"vocab_size": vocab_size, "pad_token_id": PAD}
    if architecture == "bert":
        sizes = {
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "intermediate_size": 2 * hidden,
        }
        return AutoConfig.for_model("bert", num_attention_heads=2, **sizes, **shared)
    if architecture == "gpt2":
        sizes = {"n_embd": hidden, "n_layer": layers, "n_head": 2, "n_positions": 256}
        return AutoConfig.for_model("gpt2", bos_token_id=EOS, eos_token_id=EOS, **sizes, **shared)
    if architecture == "t5":
        sizes = {"d_model": hidden, "d_kv": hidden // 2, "d_ff": 2 * hidden, "num_layers": layers}
        return AutoConfig.for_model(
            "t5", num_heads=2, eos_token_id=EOS, decoder_start_token_id=PAD, **sizes, **shared
        )
    return AutoConfig.for_model(
        "llama",
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=BOS,
        eos_token_id=EOS,
        **shared,
    )


def _tokenizer(
    architecture: Architecture, vocab: list[str], padding_side: str
) -> PreTrainedTokenizerFast:
    backend = Tokenizer(
        models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="[UNK]")
    )
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    specials: dict[str, str] = {"unk_token": "[UNK]"}
    if architecture == "bert":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)]
        )
        specials |= {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    elif architecture == "gpt2":
        specials |= {"bos_token": "[EOS]", "eos_token": "[EOS]"}
    elif architecture == "t5":
        backend.post_processor = processors.TemplateProcessing(
            single="$A [EOS]", special_tokens=[("[EOS]", EOS)]
        )
        specials |= {"pad_token": "[PAD]", "eos_token": "[EOS]"}
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="[BOS] $A", special_tokens=[("[BOS]", BOS)]
        )
        specials |= {"bos_token": "[BOS]", "eos_token": "[EOS]"}
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side=padding_side, **specials)
