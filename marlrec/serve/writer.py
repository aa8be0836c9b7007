"""One sentence per explained item, written by a local generative language model.

`explain.writer=hf explain.model=<Hugging Face id or folder>` turns the structured explanation
of an item (the role that placed it, its score and rank there, the history items it is most
like) into a prompt, and a causal language model (`AutoModelForCausalLM`) continues it greedily
for at most `explain.max_new_tokens` tokens; the continuation's first sentence is the item's
`sentence`. The model is loaded once per service; `explain.writer=none` (the default) writes
nothing. Generation is deterministic (greedy), so the same explanation gets the same sentence.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from marlrec.registry import MarlrecError

WRITERS = ("none", "hf")
MAX_NEW_TOKENS = 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True)
class WriterOptions:
    """The `explain.*` options of `marlrec serve` and `marlrec recommend`."""

    writer: str = "none"
    model: str | None = None
    max_new_tokens: int = MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        if self.writer not in WRITERS:
            raise MarlrecError(f"unknown explain.writer '{self.writer}'; writers: none, hf")
        if self.writer == "hf" and not self.model:
            raise MarlrecError("explain.writer=hf needs explain.model=<model id or folder>")
        if not 1 <= self.max_new_tokens <= 512:
            raise MarlrecError(
                f"explain.max_new_tokens must be from 1 to 512, got {self.max_new_tokens}"
            )

    @classmethod
    def from_options(cls, options: object) -> WriterOptions:
        """From the `explain` mapping of a command line (`explain.writer=hf ...`)."""
        if options is None:
            return cls()
        if not isinstance(options, dict):
            raise MarlrecError("explain takes explain.writer=..., explain.model=...")
        known = ("writer", "model", "max_new_tokens")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise MarlrecError(f"unknown option 'explain.{unknown[0]}'; options: explain.{known}")
        tokens = options.get("max_new_tokens", MAX_NEW_TOKENS)
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise MarlrecError(f"explain.max_new_tokens must be a whole number, got {tokens!r}")
        model = options.get("model")
        return cls(
            str(options.get("writer", "none")), None if model is None else str(model), tokens
        )


def load_writer(options: WriterOptions) -> SentenceWriter | None:
    """The writer the options ask for, loaded now; None for `explain.writer=none`."""
    if options.writer == "none":
        return None
    assert options.model is not None
    return SentenceWriter(options.model, options.max_new_tokens)


class SentenceWriter:
    """A causal language model and its tokenizer, writing one sentence per explained item."""

    def __init__(self, model: str, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            with _quiet_hub():
                self.tokenizer = AutoTokenizer.from_pretrained(model)
                self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        except (OSError, ValueError, KeyError) as exc:  # missing, offline, or not a causal LM
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MarlrecError(f"explain.model '{model}' cannot be loaded: {first}") from None
        # Prompts of a batch differ in length: decoder-only models continue from the right.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one generation at a time on the shared model

    def write(self, rows: list[dict[str, Any]]) -> list[str]:
        """A sentence for each explained row (as `Service.explain` builds them)."""
        if not rows:
            return []
        import torch

        prompts = [prompt(row) for row in rows]
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        batch.pop(
            "token_type_ids", None
        )  # BERT-style tokenizers add it; GPT-style models refuse it
        with self._lock, torch.no_grad():
            out = self.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [first_sentence(text) for text in texts]


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """The hub client's retry warnings off while a model loads: a failure is one line."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def prompt(row: dict[str, Any]) -> str:
    """The structured explanation of one item, in words, ending where the sentence starts."""
    title = row["text"].split(". Genres:")[0]
    if row["stage"] == "retrieval":
        placed = f"it was retrieved with score {row['score']:.2f} (rank {row['rank']})"
    else:
        placed = (
            f"the {row['placed_by']} agent chose it with score {row['score']:.2f} "
            f"(rank {row['rank']})"
        )
    lines = [f"Recommended item: {title}.", f"Why: {placed}."]
    near = row.get("nearest_history") or []
    if near:
        liked = ", ".join(
            f"{n['text'].split('. Genres:')[0]} ({n['similarity']:.2f})" for n in near
        )
        lines.append(f"Similar items in the user's history: {liked}.")
    lines.append("In one sentence, why the user may like it:")
    return "\n".join(lines)


def first_sentence(text: str) -> str:
    """The continuation's first sentence on its first non-empty line, trimmed."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return _SENTENCE_END.split(lines[0], maxsplit=1)[0].strip()
