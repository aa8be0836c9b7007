"""A finished run's trained policy: loaded from its run dir, recommending and explaining.

Items added after training (`marlrec add-items`, `POST /items`) live in the served version's
`added_items.pt` (the run dir itself until `marlrec update` writes a version, see
`marlrec.versions`): their ids, texts and embeddings by the run's encoder. Loading a run appends
them to its catalog as items nobody has consumed yet; nothing is retrained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from marlrec.agents import checkpoint_path
from marlrec.datasets.text import join_sentences
from marlrec.encoders import Encoder
from marlrec.encoders.hf import HFEncoder
from marlrec.encoders.tfidf import TfidfEncoder
from marlrec.evaluation.rankers import agent_ranker
from marlrec.io import atomic_path
from marlrec.pipeline import Pipeline, build, cache_dir, configure
from marlrec.privacy import user_index
from marlrec.registry import MarlrecError
from marlrec.versions import AddedInteractions, current_dir, version_dir

ADDED_ITEMS = "added_items.pt"
ENCODE_BATCH = 64  # texts per forward pass of a language model


def restore_best(pipeline: Pipeline, run_dir: Path) -> None:
    """Load the policy with the best validation NDCG@10, or the last one if none was kept."""
    path = checkpoint_path(run_dir, "best")
    if not path.is_file():
        path = checkpoint_path(run_dir)
    state = torch.load(path, map_location=pipeline.device, weights_only=False)
    pipeline.agent.load_state_dict(state["agent"])


def load_run(run_dir: Path, version: int | None = None) -> Pipeline:
    """Rebuild a saved run's pipeline, at `version` (None: the one it serves), and restore
    its agent."""
    folder = current_dir(run_dir) if version is None else version_dir(run_dir, version)
    for needed in (run_dir / "config.yaml", checkpoint_path(folder)):
        if not needed.is_file():
            raise MarlrecError(f"{run_dir} is not a finished marlrec run: {needed.name} is missing")
    pipeline = build_version(run_dir, folder)
    restore_best(pipeline, folder)
    return pipeline


def build_version(run_dir: Path, folder: Path) -> Pipeline:
    """The run's pipeline with the items and interactions that `folder` (a version of the
    run) adds to its dataset, its agent untrained."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert isinstance(cfg, DictConfig)
    added = AddedItems.load(folder)
    pipeline = build(
        cfg,
        new_items=(added.texts, added.embeddings) if added.ids else None,
        new_interactions=AddedInteractions.load(folder),
    )
    if added.ids and pipeline.data.n_items != added.base_items + len(added.ids):
        raise MarlrecError(
            f"{folder / ADDED_ITEMS} extends a catalog of {added.base_items} items, "
            f"but the run's data now has {pipeline.data.n_items - len(added.ids)}"
        )
    return pipeline


@dataclass(frozen=True)
class AddedItems:
    """Items added to a trained run: item `base_items + i` is `ids[i]`, `texts[i]`."""

    base_items: int
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    embeddings: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))

    @classmethod
    def load(cls, run_dir: Path) -> AddedItems:
        path = run_dir / ADDED_ITEMS
        if not path.is_file():
            return cls(base_items=-1)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return cls(saved["base_items"], saved["ids"], saved["texts"], saved["embeddings"])
        except Exception as exc:  # a damaged file: name it, whatever torch raised
            raise MarlrecError(f"{path} is not readable added items: {exc}") from None

    def save(self, run_dir: Path) -> None:
        """Written beside the run atomically: a reader sees the old file or the new one."""
        state = {
            "base_items": self.base_items,
            "ids": self.ids,
            "texts": self.texts,
            "embeddings": self.embeddings,
        }
        with atomic_path(run_dir / ADDED_ITEMS) as tmp:
            torch.save(state, tmp)


def item_texts(
    rows: list[dict[str, str]], where: str, taken: set[str]
) -> tuple[list[str], list[str]]:
    """The id and the text of each new item (its title, then its other fields, sentence by
    sentence); a one-line error names the first row without an id or title, or with an id in
    use."""
    seen = set(taken)
    ids, texts = [], []
    for number, row in enumerate(rows, 1):
        item_id, title = str(row.get("id", "")).strip(), str(row.get("title", "")).strip()
        if not item_id:
            raise MarlrecError(f"{where}, item {number}: the id is empty")
        if not title:
            raise MarlrecError(f"{where}, item {number} (id {item_id}): the title is empty")
        if item_id in seen:
            raise MarlrecError(f"{where}, item {number}: duplicate id {item_id!r}")
        seen.add(item_id)
        ids.append(item_id)
        others = [str(v).strip() for k, v in row.items() if k not in ("id", "title")]
        texts.append(join_sentences([title, *(v for v in others if v)]))
    return ids, texts


def read_csv_strings(path: Path) -> pd.DataFrame:
    """A CSV file's cells as strings; a missing or unreadable file is one line naming it."""
    if not path.is_file():
        raise MarlrecError(f"file {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise MarlrecError(f"{path} is not a readable CSV file: {reason}") from None
    return table


def read_items_file(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header naming `id`, `title` and any other text columns."""
    table = read_csv_strings(path)
    missing = [column for column in ("id", "title") if column not in table.columns]
    if missing:
        raise MarlrecError(
            f"{path} has no '{missing[0]}' column; columns: id, title and any text fields"
        )
    if table.empty:
        raise MarlrecError(f"{path} lists no items")
    return [{str(k): str(v) for k, v in row.items()} for row in table.to_dict("records")]


def add_items(run_dir: Path, p: Pipeline, rows: list[dict[str, str]], where: str) -> list[int]:
    """Encode new items with the run's encoder and append them to the `added_items.pt` of the
    version it serves; their item numbers. `p` is the run as loaded (with the items added
    before)."""
    folder = current_dir(run_dir)
    before = AddedItems.load(folder)
    base = p.data.n_items - len(before.ids)
    ids, texts = item_texts(rows, where, set(before.ids))
    new = embed_texts(p, text_encoder(p), texts).float()
    embeddings = torch.cat([before.embeddings.reshape(-1, new.shape[1]), new])
    AddedItems(base, [*before.ids, *ids], [*before.texts, *texts], embeddings).save(folder)
    return list(range(p.data.n_items, p.data.n_items + len(texts)))


def text_encoder(p: Pipeline) -> Encoder:
    """The run's encoder, as it encoded the catalog."""
    encoder = configure(p.cfg).one("encoder").create(cache_dir=cache_dir(p.cfg), device=p.device)
    assert isinstance(encoder, Encoder)
    return encoder


def embed_texts(p: Pipeline, encoder: Encoder, texts: list[str]) -> torch.Tensor:
    """Texts embedded as the run's catalog was (len(texts), dim), without writing any cache:
    TF-IDF counts document frequencies over the catalog with the texts, a language model
    runs on the texts alone; a trained encoder (`encoder.trainable`) with its trained weights."""
    tower = p.env.ctx.item_tower
    if tower is not None:
        with torch.no_grad():
            tower.eval()
            return torch.cat(
                [
                    tower.encode(texts[i : i + ENCODE_BATCH]).cpu()
                    for i in range(0, len(texts), ENCODE_BATCH)
                ]
            )
    if isinstance(encoder, TfidfEncoder):
        return encoder.encode([*p.data.item_text, *texts])[-len(texts) :]
    if isinstance(encoder, HFEncoder):
        tokenizer, model = encoder.load()
        batches = [texts[i : i + ENCODE_BATCH] for i in range(0, len(texts), ENCODE_BATCH)]
        return torch.cat([torch.as_tensor(encoder.forward(tokenizer, model, b)) for b in batches])
    return encoder.encode(texts)


def user_of(p: Pipeline, user: int | str) -> int:
    """The index of a known user: in a pseudonymised run, whose raw id is `user` (mapped
    through its keyed pseudonym); otherwise `user` is the index itself."""
    if p.key is not None:
        index = user_index(p.data, p.key, user)
        if index < 0:
            raise MarlrecError(f"unknown user {user!r}: no user of this run has that id")
        return index
    if not isinstance(user, int) or isinstance(user, bool):
        raise MarlrecError(f"user must be a whole number (the user's index), got {user!r}")
    if not 0 <= user < p.data.n_users:
        raise MarlrecError(f"unknown user {user}: ids run from 0 to {p.data.n_users - 1}")
    return user


def recommend_for(
    p: Pipeline, user: int | str, k: int, expose_history: bool = True
) -> list[dict[str, Any]]:
    """Top-k items for a known user from everything they consumed, each with why it is there
    (naming the history item it is most like only with `expose_history`)."""
    index = user_of(p, user)
    history = p.data.interactions.histories(p.data.n_users)[index]  # everything, held-out too
    top = agent_ranker(p.env, p.agent)(np.array([index]), [history], k)[0].cpu()
    return explain(p, history, top.numpy(), expose_history)


def explain(
    p: Pipeline, history: np.ndarray, items: np.ndarray, expose_history: bool = True
) -> list[dict[str, Any]]:
    """Who placed each item, and which item of the history it is most like."""
    roles, slate = p.env.spec.roles, getattr(p.env, "core", None)
    unit = torch.nn.functional.normalize(p.item_emb, dim=-1)
    similarity = unit[torch.as_tensor(items)] @ unit[torch.as_tensor(history)].T
    rows = []
    for position, item in enumerate(items.tolist()):
        if slate is not None and position < slate.slate_size:
            source = f"chosen by the '{roles[slate.turn_order[position]]}' agent"
        else:
            source = "ranked by the agents' scores after the slate"
        if not len(history):
            because = "no history yet"
        elif not expose_history:
            because = "history hidden (expose_history=true names the closest item)"
        else:
            nearest = int(similarity[position].argmax())
            because = (
                f"like '{p.data.item_text[int(history[nearest])][:70]}' "
                f"(cosine {float(similarity[position, nearest]):.2f})"
            )
        rows.append({"item": item, "text": p.data.item_text[item], "why": f"{source}; {because}"})
    return rows
