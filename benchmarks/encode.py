"""Encoder throughput: item texts per second for each backbone and batch size, cache disabled.

Backbones: `minilm` (the bundled all-MiniLM-L6-v2), `tfidf` (no language model), `tiny-bert`,
`tiny-gpt2`, `tiny-llama` (small random models built on the fly: they time the pipeline around
the model more than a model), or any Hugging Face model name or local folder.

    python benchmarks/encode.py --backbones minilm,tfidf,tiny-gpt2 --batch-sizes 16,64,256
    python benchmarks/encode.py --data ../shared/data/ml-100k   # ML-100K item texts
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from marlrec import registry
from marlrec.encoders import Encoder
from marlrec.encoders.hf import HFEncoder
from marlrec.encoders.tfidf import TfidfEncoder
from marlrec.io import write_json
from marlrec.pipeline import resolve_device
from marlrec.testing import save_tiny_model

TINY = {"tiny-bert": "bert", "tiny-gpt2": "gpt2", "tiny-llama": "llama"}
TINY_HIDDEN_SIZE = 64
WARMUP_TEXTS = [f"warm-up text number {i}" for i in range(8)]


def item_texts(data: Path | None, n_items: int, seed: int) -> tuple[str, list[str]]:
    """The first `n_items` item texts of ML-100K (`data`) or of a synthetic catalog."""
    with tempfile.TemporaryDirectory() as cache:
        if data is not None:
            section = {"name": "movielens", "path": str(data)}
            source = f"movielens:{data.name}"
        else:
            section = {"name": "synthetic", "n_items": n_items, "n_users": 50}
            section |= {"min_interactions": min(8, n_items), "max_interactions": min(40, n_items)}
            source = "synthetic"
        texts = registry.create("data", section).load(seed=seed, cache_dir=Path(cache)).item_text
    return source, texts[:n_items]


def encoder_factory(
    backbone: str, texts: list[str], models_dir: Path, args: argparse.Namespace
) -> Callable[[Path, int | None], Encoder]:
    """Builds the backbone's encoder over a (fresh) cache folder, at a batch size."""
    device = resolve_device(args.device)
    if backbone == "tfidf":
        return lambda cache, _: TfidfEncoder(TfidfEncoder.Config(), cache_dir=cache, device=device)
    if backbone == "minilm":
        model = ""
    elif backbone in TINY:
        words = {w for text in [*texts, *WARMUP_TEXTS] for w in re.findall(r"\w+", text.lower())}
        folder = models_dir / backbone
        model = str(
            save_tiny_model(TINY[backbone], folder, sorted(words), hidden_size=TINY_HIDDEN_SIZE)
        )
    else:
        model = backbone

    def make(cache: Path, batch_size: int | None) -> Encoder:
        config = HFEncoder.Config(
            model=model, dtype=args.dtype, max_length=args.max_length, batch_size=batch_size or 64
        )
        return HFEncoder(config, cache_dir=cache, device=device)

    return make


def measure(
    make: Callable[[Path, int | None], Encoder], texts: list[str], batch_size: int | None
) -> dict[str, Any]:
    """Load, warm up, then time one full encode of `texts` against an empty cache."""
    with tempfile.TemporaryDirectory() as cache:
        encoder = make(Path(cache), batch_size)
        started = time.perf_counter()
        if isinstance(encoder, HFEncoder):
            encoder.load()
        load_seconds = time.perf_counter() - started
        encoder.encode(WARMUP_TEXTS)  # first-call costs (kernels, allocator) out of the timing
        started = time.perf_counter()
        out = encoder.encode(texts)
        seconds = time.perf_counter() - started
    if isinstance(encoder, HFEncoder) and encoder.last_misses != len(set(texts)):
        raise RuntimeError(f"expected every text to miss the cache, {encoder.last_hits} hit")
    return {
        "batch_size": batch_size,
        "items": len(texts),
        "dim": int(out.shape[1]),
        "load_s": load_seconds,
        "encode_s": seconds,
        "items_per_s": len(texts) / seconds,
    }


def run(texts: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as models_dir:
        for backbone in args.backbones:
            make = encoder_factory(backbone, texts, Path(models_dir), args)
            # TF-IDF encodes the whole catalog at once: batch size does not apply.
            sizes = [None] if backbone == "tfidf" else args.batch_sizes
            for batch_size in sizes:
                rows.append({"backbone": backbone, **measure(make, texts, batch_size)})
                print_progress(rows[-1])
    return rows


def print_progress(row: dict[str, Any]) -> None:
    size = row["batch_size"] if row["batch_size"] is not None else "-"
    print(f"{row['backbone']} batch {size}: {row['items_per_s']:.1f} items/s", flush=True)


def table(rows: list[dict[str, Any]], title: str) -> Table:
    out = Table(title=title)
    for column in ("backbone", "batch size", "items", "dim", "load s", "encode s", "items/s"):
        out.add_column(column, justify="left" if column == "backbone" else "right")
    for row in rows:
        out.add_row(
            row["backbone"],
            "-" if row["batch_size"] is None else str(row["batch_size"]),
            str(row["items"]),
            str(row["dim"]),
            f"{row['load_s']:.2f}",
            f"{row['encode_s']:.2f}",
            f"{row['items_per_s']:.1f}",
        )
    return out


def comma_list(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [convert(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones",
        type=comma_list(str),
        default=["minilm", "tfidf", "tiny-gpt2", "tiny-llama"],
        help="comma-separated: minilm, tfidf, tiny-bert, tiny-gpt2, tiny-llama, or a model",
    )
    parser.add_argument("--batch-sizes", type=comma_list(int), default=[16, 64, 256])
    parser.add_argument("--n-items", type=int, default=1000, help="item texts to encode")
    parser.add_argument("--data", type=Path, default=None, help="ML-100K folder; else synthetic")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/encode.json"))
    args = parser.parse_args()

    source, texts = item_texts(args.data, args.n_items, args.seed)
    device = resolve_device(args.device)
    rows = run(texts, args)
    title = f"encoding {len(texts)} {source} item texts on {device} ({args.dtype})"
    Console().print(table(rows, title))
    write_json(
        args.out,
        {
            "source": source,
            "device": str(device),
            "dtype": args.dtype,
            "max_length": args.max_length,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "results": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
