"""Privacy: pseudonymised user ids that no output carries, and DP-SGD with its ε reported."""

from __future__ import annotations

import dataclasses
import json
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from marlrec.app import compose_config
from marlrec.pipeline import configure
from marlrec.privacy import KEY_ENV, pseudonym, pseudonymise, user_index
from marlrec.registry import MarlrecError
from marlrec.serve.app import create_app
from marlrec.serve.service import Service
from marlrec.training.dp import UserSampler
from tests.conftest import ML100K, SMALL, cli_env
from tests.test_serve import TINIEST

KEY = "a-test-key-for-pseudonyms"
RAW = [f"zq-user-{i:03d}-secret" for i in range(30)]  # raw ids no output may carry
TINY = [o for o in TINIEST if not o.startswith("data.")]  # the data is a CSV file here


def run_cli(
    *args: str, cache: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marlrec.cli", *args],
        capture_output=True,
        text=True,
        env={**without_key(cli_env(cache)), "HOME": str(cwd), **(env or {})},
        cwd=cwd,
        timeout=900,
    )


def without_key(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != KEY_ENV}


def ratings_csv(folder: Path) -> Path:
    """30 users with known raw ids, 10 interactions each over 50 items."""
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,timestamp"]
    for user in RAW:
        for t, item in enumerate(rng.choice(50, size=10, replace=False)):
            lines.append(f"{user},item{item},{1000 + t}")
    path = folder / "ratings.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def strings_in(obj: Any, seen: set[int] | None = None) -> list[str]:
    """Every text inside an unpickled object: containers, arrays and objects' attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, str | bytes):
        return [obj.decode("latin-1") if isinstance(obj, bytes) else obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for x in (k, v) for s in strings_in(x, seen)]
    if isinstance(obj, list | tuple | set):
        return [s for v in obj for s in strings_in(v, seen)]
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "USO":
        return [s for v in obj.ravel().tolist() for s in strings_in(v, seen)]
    if isinstance(obj, np.ndarray | torch.Tensor | int | float | bool) or obj is None:
        return []
    return strings_in(vars(obj), seen) if hasattr(obj, "__dict__") else [repr(obj)]


def carriers(run_dir: Path, needles: list[str]) -> list[str]:
    """Files of the run dir whose bytes, or whose unpickled checkpoint, hold any needle."""
    found = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts = [data.decode("latin-1")]
        if path.suffix == ".pt":
            texts += strings_in(torch.load(path, map_location="cpu", weights_only=False))
        if any(n in t for n in needles for t in texts):
            found.append(str(path.relative_to(run_dir)))
    return found


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory, offline_cache: Path) -> Path:
    home = tmp_path_factory.mktemp("csv-home")
    data = ratings_csv(home)
    run_dir = home / "run"
    result = run_cli(
        "train",
        *TINY,
        "data=csv",
        f"data.path={data}",
        "privacy.pseudonymise=true",
        f"hydra.run.dir={run_dir}",
        cache=offline_cache,
        cwd=home,
        env={KEY_ENV: KEY},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_no_raw_user_id_anywhere_in_a_pseudonymised_run(csv_run: Path) -> None:
    assert (csv_run / "train.log").is_file() and (csv_run / "checkpoints" / "best.pt").is_file()
    assert carriers(csv_run, RAW) == []
    assert json.loads((csv_run / "metrics.json").read_text())["privacy"]["pseudonymised"] is True


def test_serving_by_raw_id_needs_the_key(csv_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(csv_run.parent))  # no key file there
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(MarlrecError, match=f"no key was found: set \\${KEY_ENV}"):
        Service.from_run(csv_run, batching=False)
    monkeypatch.setenv(KEY_ENV, KEY)
    service = Service.from_run(csv_run, batching=False)
    client = TestClient(create_app(service))
    index = user_index(service.p.data, KEY.encode(), RAW[7])
    assert index >= 0 and service.p.data.user_ids is not None
    assert service.p.data.user_ids[index] == pseudonym(KEY.encode(), RAW[7])
    # Every raw id finds its own user; indices follow first interactions (file order here).
    indices = [user_index(service.p.data, KEY.encode(), raw) for raw in RAW]
    assert sorted(indices) == list(range(len(RAW)))
    by_id = client.get("/recommend", params={"user": RAW[7], "k": 5})
    history = ",".join(map(str, service.histories[index].tolist()))
    by_history = client.get("/recommend", params={"history": history, "k": 5})
    assert by_id.status_code == 200 and same_items(by_id.json(), by_history.json())
    assert client.post("/recommend", json={"user": RAW[7], "k": 5}).json() == by_id.json()
    unknown = client.get("/recommend", params={"user": "zq-user-999-secret"})
    assert unknown.status_code == 404 and "unknown user" in unknown.json()["error"]
    # The user's history stays out of explanations unless the service is told to show it.
    hidden = client.get("/explain", params={"user": RAW[7], "k": 5}).json()["items"]
    assert all(row["nearest_history"] == [] for row in hidden)
    shown = TestClient(create_app(Service(service.p, service.version, expose_history=True)))
    rows = shown.get("/explain", params={"user": RAW[7], "k": 5}).json()["items"]
    assert all(row["nearest_history"] for row in rows)


def test_recommend_without_the_key_is_one_line(csv_run: Path, offline_cache: Path) -> None:
    args = ("recommend", f"run_dir={csv_run}", f"user={RAW[3]}", "k=3")
    env = without_key(cli_env(offline_cache))
    result = subprocess.run(
        [sys.executable, "-m", "marlrec.cli", *args],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(csv_run.parent)},
        timeout=600,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no key was found" in result.stderr
    served = run_cli(*args, cache=offline_cache, cwd=csv_run.parent, env={KEY_ENV: KEY})
    assert served.returncode == 0, served.stderr[-2000:]
    assert "history hidden" in served.stdout


def test_pseudonyms_are_stable_per_key_and_differ_across_keys(small_pipeline: Any) -> None:
    data = small_pipeline.data
    assert pseudonym(b"k1", "alice") == pseudonym(b"k1", "alice")
    assert pseudonym(b"k1", "alice") != pseudonym(b"k2", "alice")
    first, again, other = (pseudonymise(data, k) for k in (b"k1", b"k1", b"k2"))
    assert np.array_equal(first.user_ids, again.user_ids)
    assert np.array_equal(first.interactions.user, again.interactions.user)
    assert not np.array_equal(first.user_ids, other.user_ids)
    assert all(len(name) == 64 for name in first.user_ids.tolist())
    # The same users, histories and held-out items, only re-indexed.
    for u in (0, 5, 17):
        new = user_index(first, b"k1", u)
        assert np.array_equal(first.train_histories[new], data.train_histories[u])
        assert first.split.test_item[new] == data.split.test_item[u]
        assert np.array_equal(first.truth.user_taste[new], data.truth.user_taste[u])
    assert not np.array_equal(first.interactions.user, data.interactions.user)


def test_users_are_indexed_by_first_interaction_whatever_the_key(small_pipeline: Any) -> None:
    data = small_pipeline.data
    # Every user starts at a distinct time, the last user first.
    late = dataclasses.replace(data.interactions, time=data.n_users - data.interactions.user)
    data = dataclasses.replace(data, interactions=late)
    first, other = (pseudonymise(data, k) for k in (b"k1", b"k2"))
    assert np.array_equal(
        first.interactions.user, other.interactions.user
    )  # the key can't move figures
    assert user_index(first, b"k1", data.n_users - 1) == 0
    assert user_index(other, b"k2", 0) == data.n_users - 1


def test_dp_run_reports_epsilon_and_makes_a_private_key_file(
    tmp_path: Path, offline_cache: Path
) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.max_epochs=0", "trainer.imitation_steps=20"]
    dp = ["privacy.pseudonymise=true", "privacy.dp.enabled=true", "privacy.dp.epsilon=2"]
    env = without_key(cli_env(offline_cache))
    result = subprocess.run(
        [sys.executable, "-m", "marlrec.cli", "train", *args, *dp, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(tmp_path)},
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    privacy = json.loads((run_dir / "metrics.json").read_text())["privacy"]
    assert 0 < privacy["dp"]["epsilon"] <= 2.0 + 1e-6 and privacy["dp"]["delta"] == 1e-5
    assert privacy["dp"]["noise_multiplier"] > 0
    key_file = tmp_path / ".config" / "marlrec" / "privacy.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert carriers(run_dir, [key_file.read_text().strip()]) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["privacy.dp.enabled=true"], "set trainer.max_epochs=0"),
        (["privacy.dp.epsilon=0"], "privacy.dp.epsilon must be positive"),
        (["privacy.dp.delta=2"], "privacy.dp.delta must be between 0 and 1"),
        (["privacy.pseudonymise=maybe"], "'privacy.pseudonymise' for the 'privacy' settings"),
        (["privacy.dp.epsilon=abc"], "'privacy.dp.epsilon' for the 'privacy.dp' settings"),
    ],
)
def test_bad_privacy_settings_are_refused_before_a_run(extra: list[str], message: str) -> None:
    with pytest.raises(MarlrecError, match=re.escape(message)):
        configure(compose_config([*SMALL, *extra]))


def test_a_key_file_inside_the_run_dir_is_one_line(tmp_path: Path, offline_cache: Path) -> None:
    key_file = f"privacy.key_file={tmp_path / 'run' / 'k.key'}"
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    result = run_cli(
        "train",
        *TINY,
        "privacy.pseudonymise=true",
        key_file,
        run_dir,
        cache=offline_cache,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "inside the run dir" in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run" / "k.key").exists()


def test_user_sampling_takes_each_user_at_most_once() -> None:
    users = np.repeat(np.arange(50), np.arange(50) % 4 + 1)  # positions grouped by user
    sampler = UserSampler.of(users, batch_size=10)
    assert sampler.rate == pytest.approx(10 / 50)
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(200):
        drawn = sampler.draw(rng)
        assert len(set(users[drawn].tolist())) == len(drawn)
        sizes.append(len(drawn))
    assert np.mean(sizes) == pytest.approx(10, rel=0.1)


@pytest.mark.slow
@pytest.mark.skipif(not ML100K.is_dir(), reason="MovieLens-100K is not on disk")
def test_ml100k_users_are_found_by_their_raw_ids(offline_cache: Path) -> None:
    from marlrec.datasets.movielens import MovieLensDataset
    from marlrec.pipeline import cache_dir

    cfg = compose_config([f"data.path={ML100K}", "experiment=ml100k"])
    assert configure(cfg).privacy.pseudonymise  # on in the real-data preset
    data = MovieLensDataset(MovieLensDataset.Config(path=str(ML100K))).load(
        seed=0, cache_dir=cache_dir(cfg)
    )
    hidden = pseudonymise(data, KEY.encode())
    raw = np.loadtxt(ML100K / "u.data", dtype=np.int64)
    items = data.item_attributes["raw_id"]
    for user in (1, 196, 943):
        logged = raw[raw[:, 0] == user]
        index = user_index(hidden, KEY.encode(), user)
        mine = items[hidden.interactions.histories(hidden.n_users)[index]]
        assert sorted(mine.tolist()) == sorted(logged[:, 1].tolist())


def same_items(answer: dict, other: dict) -> bool:
    """The same items placed by the same roles, scores equal up to float rounding (a known
    user's retrieval is computed in a batch at load, a history's on its own)."""
    keys = [[(row["item"], row["placed_by"]) for row in a["items"]] for a in (answer, other)]
    scores = [[row["score"] for row in a["items"]] for a in (answer, other)]
    return keys[0] == keys[1] and scores[0] == pytest.approx(scores[1], abs=1e-5)
