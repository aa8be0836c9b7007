"""The same seed on CPU gives the same training history and the same evaluation figures."""

from __future__ import annotations

import json
from pathlib import Path

from marlrec.run import train
from marlrec.training.loop import VALID_METRIC
from tests.conftest import compose_config

TINY = [
    "experiment=quick",
    "data.n_users=60",
    "data.n_items=200",
    "device=cpu",
    "trainer.threads=1",  # float sums follow the thread count, which otherwise follows live jobs
    "trainer.show_progress=false",
    "trainer.max_epochs=2",
    "trainer.epoch_num_env_steps=96",
    "trainer.collect_num_env_steps=32",
    "trainer.batch_size=32",
    "trainer.test_episodes=2",
    "eval.sessions=5",
    "agent.hidden=16",
    "baseline=[random]",
]


def test_same_seed_same_metrics(tmp_path: Path, offline_cache: Path) -> None:
    cfg = compose_config(TINY)
    first = train(cfg, tmp_path / "first")
    second = train(cfg, tmp_path / "second")
    assert first["eval"] == second["eval"]
    assert first["history"] == second["history"]
    # Epoch 0 (after imitation) and both RL epochs are validated.
    assert [VALID_METRIC in record for record in first["history"]] == [True, True, True]
    saved = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert saved["eval"] == first["eval"]
    assert (tmp_path / "first" / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
