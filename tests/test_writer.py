"""`explain.writer=hf`: a local causal language model writes one sentence per explained item.

The model is a tiny GPT-2 with random weights and a word-level tokenizer, built from a config
and saved to a folder: its sentences are gibberish, but the path from the explanation to the
prompt, the model, the response and the command line is the one a real model takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from marlrec.cli import main
from marlrec.registry import MarlrecError
from marlrec.serve.app import create_app
from marlrec.serve.service import Service
from marlrec.serve.writer import SentenceWriter, WriterOptions, first_sentence, prompt

WORDS = "the a user may like it because agent chose score rank similar items watched why"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<unk>", "<pad>", "<eos>"]
    tokenizer.train_from_iterator([WORDS], trainers.WordLevelTrainer(special_tokens=special))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    fast.save_pretrained(folder)
    config = GPT2Config(
        vocab_size=len(fast), n_positions=512, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=2, eos_token_id=2, pad_token_id=1, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # special tokens (decoded as nothing) score 0: words win somewhere
        model.lm_head.weight[:3] = 0.0
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def explained(tiniest_run: Path, tiny_model: Path) -> tuple[Service, Service]:
    """The run served without a writer and with the tiny model's."""
    plain = Service.from_run(tiniest_run, batching=False, expose_history=True)
    options = WriterOptions("hf", str(tiny_model), max_new_tokens=8)
    written = Service.from_run(tiniest_run, batching=False, expose_history=True, writer=options)
    return plain, written


def test_explanations_have_no_sentence_by_default(explained: tuple[Service, Service]) -> None:
    plain, _ = explained
    assert plain.writer is None
    body = TestClient(create_app(plain)).get("/explain", params={"user": 3, "k": 4}).json()
    assert body["items"] and all("sentence" not in row for row in body["items"])


def test_the_writer_adds_one_sentence_per_explained_item(
    explained: tuple[Service, Service],
) -> None:
    plain, written = explained
    client = TestClient(create_app(written))
    body = client.get("/explain", params={"user": 3, "k": 4}).json()
    without = TestClient(create_app(plain)).get("/explain", params={"user": 3, "k": 4}).json()
    sentences = [row.pop("sentence") for row in body["items"]]
    assert body["items"] == without["items"]  # the rest of the explanation is unchanged
    assert all(isinstance(s, str) and "\n" not in s for s in sentences)
    assert any(sentences)  # eight greedy tokens of a word-level vocabulary are not all blank
    again = client.get("/explain", params={"user": 3, "k": 4}).json()["items"]
    assert [row["sentence"] for row in again] == sentences  # greedy: the same every time
    # /recommend answers as before: no explanation, so no sentence.
    assert "sentence" not in client.get("/recommend", params={"user": 3}).json()["items"][0]


def test_the_prompt_states_the_structured_explanation(explained: tuple[Service, Service]) -> None:
    _, written = explained
    row = written.explain(written.answer(_query(3)))[0]
    text = prompt(row)
    assert (
        row["placed_by"] in text and f"{row['score']:.2f}" in text and f"rank {row['rank']}" in text
    )
    assert row["nearest_history"][0]["text"].split(". Genres:")[0] in text
    assert first_sentence("\n  It fits. And more.\nnext") == "It fits."


def test_recommend_on_the_command_line_prints_the_sentences(
    tiniest_run: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["recommend", f"run_dir={tiniest_run}", "user=3", "k=2"]
    assert main([*args, "explain.writer=hf", f"explain.model={tiny_model}"]) == 0
    assert "sentence" in capsys.readouterr().out
    assert main(args) == 0
    assert "sentence" not in capsys.readouterr().out


def test_a_model_that_cannot_be_loaded_is_one_line(
    tiniest_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MarlrecError, match=r"explain.model '.*' cannot be loaded"):
        SentenceWriter(str(tmp_path / "missing"))
    for bad, expected in (
        ([f"explain.model={tmp_path / 'missing'}", "explain.writer=hf"], "cannot be loaded"),
        (["explain.writer=hf"], "needs explain.model"),
        (["explain.writer=gpt"], "unknown explain.writer 'gpt'"),
        (["explain.temperature=1"], "unknown option 'explain.temperature'"),
    ):
        for command in ("serve", "recommend"):
            query = ["user=3"] if command == "recommend" else ["port=0"]
            assert main([command, f"run_dir={tiniest_run}", *query, *bad]) == 2
            err = capsys.readouterr().err
            assert expected in err and err.count("\n") == 1, (command, bad, err)


def _query(user: int) -> object:
    from marlrec.serve.service import Query

    return Query(k=3, user=user)


def test_worker_processes_get_the_same_writer_options(tiny_model: Path) -> None:
    import json

    from marlrec.serve.app import writer_environment

    options = WriterOptions("hf", str(tiny_model), max_new_tokens=12)
    assert WriterOptions(**json.loads(writer_environment(options))) == options
    assert WriterOptions(**json.loads(writer_environment(WriterOptions()))).writer == "none"
