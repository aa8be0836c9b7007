"""Shared fixtures: an offline, isolated environment and a small composed pipeline."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from marlrec.app import compose_config
from marlrec.pipeline import Pipeline, build

REPO = Path(__file__).resolve().parents[1]
ML100K = REPO.parent / "shared" / "data" / "ml-100k"

# Small sizes that keep every test fast while exercising every plugin for real.
SMALL = [
    "experiment=quick",
    "data.n_users=120",
    "data.n_items=300",
    "trainer.show_progress=false",
]


@pytest.fixture(scope="session", autouse=True)
def offline_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No hub access, and one embedding cache for the whole session (never the user's)."""
    cache = tmp_path_factory.mktemp("marlrec-cache")
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "MARLREC_CACHE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["MARLREC_CACHE"] = str(cache)
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def cli_env(cache: Path) -> dict[str, str]:
    """Environment for a `marlrec` subprocess: offline, the session cache, unbuffered."""
    overrides = {"HF_HUB_OFFLINE": "1", "MARLREC_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return {**os.environ, **overrides}


@pytest.fixture(scope="session")
def small_pipeline(offline_cache: Path) -> Pipeline:
    """Every default plugin, built for real on a small synthetic catalog."""
    return build(compose_config(SMALL))


@pytest.fixture(scope="session")
def tiniest_run(tmp_path_factory: pytest.TempPathFactory, offline_cache: Path) -> Path:
    """One tiny trained run (tests.test_serve.TINIEST) for the serving, export and add-items
    tests; a test that changes a run copies it first."""
    from tests.test_serve import TINIEST
    from tests.test_train_e2e import marlrec

    run = tmp_path_factory.mktemp("tiniest-run")
    marlrec("train", *TINIEST, f"hydra.run.dir={run}", cache=offline_cache, cwd=run)
    return run
