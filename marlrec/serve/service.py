"""A loaded run answering queries: by user id, by a history of item ids, or by a text.

A text query is served by the agents, not by similarity alone: the run's encoder embeds the
text in the item embedding space; the cosine between that embedding and each item replaces the
retrieval scores (so the candidates are the items most like the text), and the state the agents
read is the state model's over a pseudo-history of the `TEXT_HISTORY` items most like the text.
The roles then fill the slate from those candidates as for any user. The pseudo-history items
are the best matches, so they are not excluded from the answer as a real history would be:
the candidates are ranked with an empty exclusion set. Its explanations list no nearest
history items: it has no history.

New items (`add_items`) are encoded by the run's encoder into the run dir's `added_items.pt`;
the service then reloads the run with them and swaps it in whole, so a request is answered by
the old catalog or the new one, never a mix. Other worker processes see them when restarted.

A new version of the run (`marlrec update`) is switched to while serving: `watch` polls the
run's version pointer (one `stat` a second), loads the new version fully in the background while
the old one answers, then swaps it in. Each worker process watches on its own. A version only
adds users and items, so a request begun on the old version is answered consistently.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from marlrec.agents import checkpoint_path
from marlrec.encoders import Encoder
from marlrec.envs import CandidateScorer
from marlrec.export import check_export, fp32_scorer, load_scorer
from marlrec.pipeline import Pipeline
from marlrec.recommend import add_items, embed_texts, load_run, text_encoder, user_of
from marlrec.registry import MarlrecError
from marlrec.serve.batching import MicroBatcher
from marlrec.serve.ranking import (
    SLATE,
    Placement,
    ServedRanking,
    nearest_history,
    reward_contributions,
)
from marlrec.serve.writer import SentenceWriter, WriterOptions, load_writer
from marlrec.versions import current_version, pointer_stamp, version_dir

log = logging.getLogger(__name__)

TEXT_HISTORY = 5  # items most like a text that stand in for its history
NEAREST = 3  # history items shown beside each explained item


class BadQuery(ValueError):
    """A query the service cannot answer: a 4xx with its message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Query:
    """Exactly one of user, history and text, and how many items."""

    k: int
    user: int | str | None = None  # the index; in a pseudonymised run, the outside id
    history: tuple[int, ...] | None = None
    text: str | None = None


@dataclass(frozen=True)
class Answer:
    placements: list[Placement]
    history: np.ndarray  # what the query was ranked from (never served as such)
    user: int  # -1 for history and text queries


class Service:
    """The run's pipeline, loaded once, with its model version and a micro-batcher."""

    def __init__(
        self,
        pipeline: Pipeline,
        version: str,
        batching: bool = True,
        expose_history: bool = False,
        run_dir: Path | None = None,
        scorer: CandidateScorer | None = None,
        model: str = "fp32",
        writer: SentenceWriter | None = None,
        keep_known: bool = True,
    ) -> None:
        self.writer = writer  # writes each explained item's `sentence`, when one is set
        self.expose_history = expose_history
        self.model = model  # fp32, or the export format served
        # A server retrieves every known user ahead of their requests; one query does not.
        self.keep_known = keep_known
        self._install(pipeline, version, scorer)
        self.run_dir = run_dir
        self._encoder: Encoder | None = None
        self._batcher = MicroBatcher(self._rank_many) if batching else None
        self._adding = threading.Lock()  # one catalog change at a time
        self._watching = threading.Event()

    def _install(self, pipeline: Pipeline, version: str, scorer: CandidateScorer | None) -> None:
        """Serve `pipeline` from now on. The pipeline goes first and the sizes that admit
        requests last: a request checked against the new sizes is ranked by the new pipeline,
        and one checked against the old ones is valid in both (versions only append)."""
        histories = pipeline.data.interactions.histories(pipeline.data.n_users)
        ranking = ServedRanking(pipeline, scorer or fp32_scorer(pipeline))
        if self.keep_known:
            ranking.keep_known(histories)  # before it serves: no first request waits for it
        # First: a pass ranks with the pipeline and scorer this holds.
        self.ranking = ranking
        self.p = pipeline
        self.histories = histories
        self.n_users = pipeline.data.n_users
        self.n_items = pipeline.data.n_items
        self.version = version

    @classmethod
    def from_run(
        cls,
        run_dir: Path,
        batching: bool = True,
        expose_history: bool = False,
        model: str = "fp32",
        writer: WriterOptions | None = None,
        keep_known: bool = True,
    ) -> Service:
        """`model`: fp32 (the checkpoint's networks) or an export of them (`marlrec export`),
        which the version names; `writer`: the language model that writes explanations'
        sentences (`explain.writer=hf`), loaded once here; `keep_known`: retrieve every known
        user at load (`ServedRanking.keep_known`), as a server should."""
        if model != "fp32":
            check_export(run_dir, model)  # before minutes of loading
        sentences = load_writer(writer or WriterOptions())  # a bad model fails first, too
        number = current_version(run_dir)  # read once: the label matches the load
        pipeline = load_run(run_dir, number)
        version = model_version(run_dir, number) + ("" if model == "fp32" else f"-{model}")
        scorer = load_scorer(run_dir, model, pipeline) if model != "fp32" else None
        return cls(
            pipeline,
            version,
            batching,
            expose_history,
            run_dir,
            scorer,
            model,
            sentences,
            keep_known,
        )

    def reload(self) -> bool:
        """Switch to the run's current version if it is not the one served; whether it did."""
        if self.run_dir is None:
            return False
        with self._adding:
            number = current_version(self.run_dir)  # read once: the label matches the load
            version = model_version(self.run_dir, number) + (
                "" if self.model == "fp32" else f"-{self.model}"
            )
            if version == self.version:
                return False
            if self.model != "fp32":
                check_export(self.run_dir, self.model)  # the new version's export, or none
            pipeline = load_run(self.run_dir, number)
            scorer = (
                load_scorer(self.run_dir, self.model, pipeline) if self.model != "fp32" else None
            )
            self._install(pipeline, version, scorer)
        log.info("serving version %s of %s", version, self.run_dir)
        return True

    def watch(self, every_seconds: float) -> None:
        """Poll the run's version pointer in a background thread and switch to a new version
        when one lands; a version that fails to load is logged and the old one kept."""
        if self.run_dir is None or self._watching.is_set():
            return
        self._watching.set()
        run_dir = self.run_dir
        seen = pointer_stamp(run_dir)

        def poll() -> None:
            nonlocal seen
            while self._watching.is_set():
                time.sleep(every_seconds)
                stamp = pointer_stamp(run_dir)
                if stamp == seen:
                    continue
                seen = stamp
                try:
                    self.reload()
                except Exception as exc:  # keep serving what works; say why once
                    log.warning("version of %s not switched to: %s", run_dir, exc)

        threading.Thread(target=poll, name="marlrec-version-watch", daemon=True).start()

    def stop_watching(self) -> None:
        self._watching.clear()

    def add_items(self, rows: list[dict[str, str]]) -> list[int]:
        """Encode and store new items, then serve the run with them; their item numbers."""
        if self.run_dir is None:
            raise BadQuery("this service has no run dir to add items to", 409)
        if self.model != "fp32":  # an export holds the catalog it was made with
            raise BadQuery("items cannot be added while an export is served: serve fp32", 409)
        with self._adding:
            try:
                numbers = add_items(self.run_dir, self.p, rows, "items")
            except MarlrecError as exc:
                raise BadQuery(str(exc), 409 if "duplicate id" in str(exc) else 422) from None
            self._install(load_run(self.run_dir), self.version, None)
        return numbers

    def answer(self, query: Query) -> Answer:
        """`query` ranked on its own."""
        self._check(query)
        if query.text is not None:
            return self._answer_text(query.text, query.k)
        user, history = self._history(query)
        return Answer(self._rank_many([(history, query.k, user)])[0], history, user)

    async def answer_soon(self, query: Query) -> Answer:
        """`query` answered from the event loop: ranked with the queries that arrived with it
        when batching, else on its own in a worker thread (as is a text, which runs the
        encoder)."""
        if self._batcher is None or query.text is not None:
            return await asyncio.to_thread(self.answer, query)
        self._check(query)
        user, history = self._history(query)
        rows = await self._batcher.submit((history, query.k, user))
        return Answer(rows, history, user)

    def _history(self, query: Query) -> tuple[int, np.ndarray]:
        """The user's index (-1 for a history query) and the history to rank from."""
        user = -1 if query.user is None else self._user(query.user)
        history = self.histories[user] if user >= 0 else np.asarray(query.history, np.int64)
        return user, history

    def explain(self, answer: Answer) -> list[dict]:
        """Each served item with who placed it, its score and rank there, the reward terms it
        moves and the history items most like it; with a writer, a `sentence` saying so."""
        slate = [row for row in answer.placements if row.stage == SLATE]
        terms = reward_contributions(self.p, answer.user, slate) if slate else []
        items = [row.item for row in answer.placements]
        # A known user's history is theirs: named only when the service was asked to.
        hidden = answer.user >= 0 and not self.expose_history
        near = (
            [[] for _ in items]
            if hidden
            else nearest_history(self.p, items, answer.history, NEAREST)
        )
        text = self.p.data.item_text
        rows = [
            {
                **self.item_row(row),
                "stage": row.stage,
                "rank": row.rank,
                "reward_terms": terms[i] if i < len(terms) else {},
                "nearest_history": [
                    {"item": j, "text": text[j], "similarity": s} for j, s in near[i]
                ],
            }
            for i, row in enumerate(answer.placements)
        ]
        if self.writer is not None:
            for row, sentence in zip(rows, self.writer.write(rows), strict=True):
                row["sentence"] = sentence
        return rows

    def item_row(self, row: Placement) -> dict:
        return {
            "item": row.item,
            "text": self.p.data.item_text[row.item],
            "placed_by": row.scored_by,
            "score": round(row.score, 6),
        }

    def _check(self, q: Query) -> None:
        given = [name for name in ("user", "history", "text") if getattr(q, name) is not None]
        if len(given) != 1:
            raise BadQuery("give exactly one of user, history and text")
        if not 1 <= q.k <= self.n_items:
            raise BadQuery(f"k must be between 1 and the catalog size {self.n_items}, got {q.k}")
        unknown = [i for i in q.history or () if not 0 <= i < self.n_items]
        if unknown:
            raise BadQuery(f"unknown item {unknown[0]}: ids run from 0 to {self.n_items - 1}")
        if q.text is not None and not q.text.strip():
            raise BadQuery("text is empty")

    def _user(self, user: int | str) -> int:
        """A known user's index: through the keyed pseudonym of `user` in a pseudonymised run,
        else `user` is the index (an integer, or its digits)."""
        if self.p.key is None:
            if isinstance(user, str):
                try:
                    user = int(user.strip())
                except ValueError:
                    raise BadQuery(f"user must be an integer id, got {user!r}", 422) from None
            if not 0 <= user < self.n_users:
                raise BadQuery(f"unknown user {user}: ids run from 0 to {self.n_users - 1}", 404)
            return user
        try:
            return user_of(self.p, user)
        except MarlrecError as exc:
            raise BadQuery(str(exc), 404) from None

    def _rank_many(self, jobs: list[tuple[np.ndarray, int, int]]) -> list[list[Placement]]:
        """Top-k placements of each (history, k, user: -1 for a history query) in one pass."""
        histories, ks, users = (list(column) for column in zip(*jobs, strict=True))
        return self.ranking.rank(histories, users, ks)

    def _answer_text(self, text: str, k: int) -> Answer:
        ranking = self.ranking  # one catalog throughout, even if items are added meanwhile
        p = ranking.p
        query = torch.nn.functional.normalize(self._embed(p, text).to(p.item_emb), dim=-1)
        similarity = torch.nn.functional.normalize(p.item_emb, dim=-1) @ query
        pseudo = similarity.topk(TEXT_HISTORY).indices.cpu().numpy()
        rows = ranking.rank_text(similarity, pseudo, k)
        return Answer(rows, np.empty(0, np.int64), -1)  # a text has no history to show

    def _embed(self, p: Pipeline, text: str) -> torch.Tensor:
        encoder = self._encoder = self._encoder or text_encoder(p)
        return embed_texts(p, encoder, [text])[0]


def model_version(run_dir: Path, version: int | None = None) -> str:
    """The first 12 hex digits of the served checkpoint's SHA-1 (`best`, else `last`), after
    `v<n>-` for version n of the run (`marlrec update`; None: the current version)."""
    version = current_version(run_dir) if version is None else version
    folder = version_dir(run_dir, version)
    path = checkpoint_path(folder, "best")
    if not path.is_file():
        path = checkpoint_path(folder)
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    return digest if version == 0 else f"v{version}-{digest}"
