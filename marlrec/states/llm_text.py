"""`llm_text`: the recent history written out as text and embedded by the run's language model.

The last `items` items of a history are rendered newest first, e.g.

    Recently watched: Heat (1995); Alien (1979); Toy Story (1995).

and that text is embedded by the run's own encoder (the one that embedded the catalog, given as
the `encoder` dependency, with its on-disk cache), so the state lives in the same space as the
item embeddings and retrieval by cosine is meaningful. Newest first, because an encoder cuts a
too-long text at its end, where the oldest items then are. Use it with a language-model encoder
such as `hf`: an encoder whose vectors depend on the whole batch of texts it is given (`tfidf`
weighs words by their frequency in that batch) gives history vectors unlike its item vectors.

It has no parameters: the agents read it from the observation. States are memoised per rendered
window of item ids (least recently used first out), so repeated sessions never re-encode. The
StateModel API hands over item embeddings, not ids: `forward` maps them back to catalog ids by
the nearest catalog row (an exact match, as the environment indexes the catalog), while
`forward_ids` takes the ids directly. An empty history gives zeros, as `mean` does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from marlrec.data import Histories
from marlrec.encoders import Encoder
from marlrec.registry import MarlrecError, PluginError
from marlrec.states import StateModel, last_items, real_positions

# Distinct history rows compared with the whole catalog at once, to bound the lookup's memory.
LOOKUP_CHUNK = 4096
# Trailing characters dropped from an item's text before it joins the rendered list.
TRAILING = " .;,:-\u2013\u2014"


@dataclass(kw_only=True)
class LLMTextConfig:
    items: int = 5
    """Most recent history items written into the text."""
    item_chars: int = 60
    """Each item's text is cut to this many characters at a word boundary; 0 keeps it whole."""
    template: str = "Recently watched: {items}."
    """The rendered text; `{items}` is replaced by the item texts, newest first."""
    separator: str = "; "
    """Between two item texts."""
    memo_size: int = 4096
    """Encoded histories kept in memory (least recently used dropped first)."""


class LLMTextState(StateModel):
    """The language model's embedding of "Recently watched: A; B; C." (A newest)."""

    Config = LLMTextConfig
    config: LLMTextConfig

    def __init__(
        self,
        config: LLMTextConfig,
        *,
        item_dim: int,
        item_text: Sequence[str] | None = None,
        encoder: Encoder | None = None,
        n_items: int | None = None,
    ) -> None:
        super().__init__(
            config, item_dim=item_dim, item_text=item_text, encoder=encoder, n_items=n_items
        )
        _check(config, self.where)
        if item_text is None or encoder is None:
            raise PluginError(
                f"{self.where} needs the catalog's item texts and the run's encoder "
                "(item_text=..., encoder=...), and was built without them"
            )
        self.item_text = item_text
        self.encoder = encoder
        self._memo: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self._catalog: dict[torch.device, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return self.item_dim

    def render(self, item_ids: Sequence[int]) -> str:
        """The text for a history (ids in time order): its last `items` items, newest first."""
        recent = list(item_ids)[-self.config.items :][::-1]
        texts = [_shorten(self.item_text[i], self.config.item_chars) for i in recent]
        return self.config.template.replace("{items}", self.config.separator.join(texts))

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """States (B, dim) from item embeddings (B, L, item_dim), read back as catalog ids."""
        window, lengths = last_items(history, lengths, self.config.items)
        return self.forward_ids(self._nearest_ids(window, lengths), lengths)

    def from_histories(self, histories: Histories, item_emb: torch.Tensor) -> torch.Tensor:
        # The ids are at hand: no nearest-embedding lookup back to the catalog.
        return self.forward_ids(*histories.last(self.config.items))

    @torch.no_grad()
    def forward_ids(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """States (B, dim) from right-padded item ids (B, L) with true lengths (B,)."""
        window, lengths = last_items(ids, lengths, self.config.items)
        keys = [tuple(row[:n]) for row, n in zip(window.tolist(), lengths.tolist(), strict=True)]
        self._check_ids(keys)
        found = self._encoded([k for k in keys if k])
        empty = torch.zeros(self.item_dim)
        states = torch.stack([found[k] if k else empty for k in keys]) if keys else empty[:0]
        return states.reshape(len(keys), self.item_dim).to(ids.device)

    def _encoded(self, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], torch.Tensor]:
        """The state of every distinct key, from the memo or one batched encoder call."""
        found: dict[tuple[int, ...], torch.Tensor] = {}
        for key in dict.fromkeys(keys):
            if key in self._memo:
                self._memo.move_to_end(key)
                found[key] = self._memo[key]
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            vectors = self._encode([self.render(k) for k in missing])
            # Own copies: a row view would keep the whole batch alive in the memo.
            found.update(zip(missing, (v.clone() for v in vectors), strict=True))
            for key in missing:
                self._memo[key] = found[key]
            while len(self._memo) > self.config.memo_size:
                self._memo.popitem(last=False)
        return found

    def _encode(self, texts: list[str]) -> torch.Tensor:
        vectors = self.encoder.encode(texts).float().cpu()
        if vectors.shape[1] != self.item_dim:
            raise PluginError(
                f"{self.where}: the encoder gives {vectors.shape[1]}-d vectors but the items "
                f"are {self.item_dim}-d; it must use the run's encoder"
            )
        return vectors

    def _check_ids(self, keys: list[tuple[int, ...]]) -> None:
        bad = [i for key in keys for i in key if not 0 <= i < len(self.item_text)]
        if bad:
            raise MarlrecError(
                f"{self.where}: unknown item id {bad[0]} in a history "
                f"(the catalog has ids 0..{len(self.item_text) - 1})"
            )

    def _nearest_ids(self, window: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Catalog ids (B, W) of the rows nearest to each real embedding; -1 on padding."""
        real = real_positions(window, lengths)
        ids = torch.full(real.shape, -1, dtype=torch.long, device=window.device)
        if not real.any():
            return ids
        # Histories repeat items: each distinct row is looked up once.
        rows, inverse = torch.unique(window[real].float(), dim=0, return_inverse=True)
        catalog = self._catalog_on(window.device)
        nearest = torch.cat(
            [torch.cdist(chunk, catalog).argmin(dim=1) for chunk in rows.split(LOOKUP_CHUNK)]
        )
        ids[real] = nearest[inverse]
        return ids

    def _catalog_on(self, device: torch.device) -> torch.Tensor:
        """The catalog's embeddings as the run's encoder gives them (from its cache)."""
        if device not in self._catalog:
            if not self._catalog:
                self._catalog[torch.device("cpu")] = self._encode(list(self.item_text))
            self._catalog[device] = next(iter(self._catalog.values())).to(device)
        return self._catalog[device]


def _shorten(text: str, limit: int) -> str:
    text = text.strip().rstrip(TRAILING)
    if limit and len(text) > limit:
        cut = text[: limit + 1]
        # Cut at the last space within the limit, unless the text has none there.
        text = cut[: cut.rfind(" ")] if " " in cut else text[:limit]
    return text.rstrip(TRAILING)


def _check(config: LLMTextConfig, where: str) -> None:
    for key, least in (("items", 1), ("item_chars", 0), ("memo_size", 1)):
        if getattr(config, key) < least:
            raise PluginError(
                f"{where}: {key} must be at least {least}, got {getattr(config, key)}"
            )
    if "{items}" not in config.template:
        raise PluginError(f"{where}: template must contain '{{items}}', got {config.template!r}")
