"""`marlrec update`: new interactions, users and items make a new version of a run, the old one
kept, switched to by a running service without a failed request."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from benchmarks.update import (
    DONE,
    EVERY,
    FIRST,
    completed,
    every_in_window,
    first_in_window,
    reading,
    summary,
    update_name,
)
from marlrec import cli, update, versions
from marlrec.agents import checkpoint_path
from marlrec.export import check_export, export_dir
from marlrec.pipeline import Pipeline
from marlrec.privacy import pseudonym, pseudonymise, user_index
from marlrec.recommend import AddedItems, load_run
from marlrec.registry import MarlrecError
from marlrec.serve.app import create_app
from marlrec.serve.service import Service, model_version
from marlrec.update import UpdateOptions, read_log, resolve, update_run

NEW_ITEMS = "id,title,genres\nnova-1,Zyxqua Orbit Harmonics,space opera\n"
FEW_STEPS = UpdateOptions(steps=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiniest_run: Path) -> Path:
    run = tmp_path_factory.mktemp("update") / "run"
    shutil.copytree(tiniest_run, run)
    return run


@pytest.fixture(scope="module")
def loaded(trained: Path) -> Pipeline:
    return load_run(trained)


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run that a test may update."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def write(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def new_log(p: Pipeline) -> str:
    """Two known users with new items, and a new user (the next index) with a new item."""
    n, later = p.data.n_users, float(p.data.interactions.time.max()) + 1
    return (
        "user,item,rating,timestamp\n"
        f"3,5,4,{later}\n3,17,5,{later + 1}\n"
        f"{n},nova-1,3,{later + 2}\n{n},5,1,{later + 3}\n{n},9,1,{later + 4}\n"
        f"7,nova-1,1,{later + 5}\n"
    )


def test_update_writes_a_new_served_version_and_keeps_the_old(
    run: Path, loaded: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = checkpoint_path(run, "best").read_bytes()
    args = [f"run_dir={run}", f"log={write(tmp_path, new_log(loaded))}", "steps=4"]
    items = write(tmp_path, NEW_ITEMS, "items.csv")
    assert cli.main(["update", *args, f"items={items}"]) == 0
    assert "wrote version 1" in capsys.readouterr().out
    assert versions.current_version(run) == 1
    assert checkpoint_path(run, "best").read_bytes() == before  # version 0 as it was
    assert checkpoint_path(run / "versions" / "1", "best").is_file()
    p = load_run(run)
    n_users, n_items = loaded.data.n_users, loaded.data.n_items
    assert (p.data.n_users, p.data.n_items) == (n_users + 1, n_items + 1)
    assert AddedItems.load(run / "versions" / "1").ids == ["nova-1"]
    assert p.data.interactions.histories(p.data.n_users)[n_users].tolist() == [n_items, 5, 9]
    assert len(p.data.interactions) == len(loaded.data.interactions) + 6
    assert model_version(run).startswith("v1-")
    # A simulated user still answers: the new item's unknown truth is not averaged in.
    assert np.isfinite(p.env.ctx.simulator.click_probability(3, np.array([0, 1]))).all()
    # Exports belong to the version whose checkpoint they are made from.
    assert export_dir(run, "int8") == run / "versions" / "1" / "export" / "int8"
    with pytest.raises(MarlrecError, match="has no int8 export"):
        check_export(run, "int8")
    # The new user is known from now on; a second update builds on the first.
    assert cli.main(["recommend", f"run_dir={run}", f"user={n_users}", "k=3"]) == 0
    later = float(p.data.interactions.time.max()) + 1
    second = write(tmp_path, f"user,item,timestamp\n{n_users},nova-1,{later}\n", "second.csv")
    assert update_run(run, second, options=FEW_STEPS)["version"] == 2
    assert load_run(run).data.interactions.histories(n_users + 1)[n_users][-1] == n_items
    assert versions.current_version(run) == 2 and (run / "versions" / "1").is_dir()


def test_the_fine_tuning_draws_fresh_choices_and_keeps_the_best_validation(
    run: Path, loaded: Pipeline, tmp_path: Path
) -> None:
    items = write(tmp_path, NEW_ITEMS, "items.csv")
    report = update_run(run, write(tmp_path, new_log(loaded)), items, FEW_STEPS)
    assert report["steps"] == 4 and report["new_users"] == 1 and report["new_items"] == 1
    # The data is split again (leave-one-out): user 3's two new interactions are now held
    # out and the two held out before are trained on (2 fresh choices); user 7's new one is
    # test, so the former validation item trains (1); the new user's first item starts their
    # history and the other two are held out (0).
    assert report["fresh_choices"] == 3
    assert report["valid_ndcg10_after"] >= report["valid_ndcg10_before"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("user,item,stars,timestamp\n1,2,3,4\n", "unknown column 'stars'"),
        ("user,item\n1,2\n", "has no 'timestamp' column"),
        ("user,item,timestamp\n", "lists no interactions"),
        ("", "is not a readable CSV file"),
        ("user,item,timestamp\n1,2,soon\n", "line 2: timestamp 'soon' is not a number"),
        ("user,item,rating,timestamp\n1,2,nan,4\n", "line 2: rating 'nan' is not a number"),
        ("user,item,timestamp\n1,2,3\n,2,4\n", "line 3: the user is empty"),
    ],
)
def test_malformed_logs_are_one_line_errors(
    trained: Path, tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(MarlrecError) as error:
        read_log(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert cli.main(["update", f"run_dir={trained}", f"log={path}"]) == 2
    assert message in capsys.readouterr().err
    assert versions.current_version(trained) == 0


def test_a_missing_log_and_bad_options_are_one_line_errors(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(tmp_path, "user,item,timestamp\n1,2,3\n")
    for args, message in [
        ([f"log={tmp_path / 'absent.csv'}"], "does not exist"),
        ([f"log={log}", "steps=-1"], "steps must be a whole number"),
        ([f"log={log}", "replay=yes"], "replay must be a number"),
        ([f"log={log}", "lr=0"], "lr must be a positive number"),
        ([f"log={log}", "force=maybe"], "force must be true or false"),
        ([], "missing log=..."),
    ]:
        assert cli.main(["update", f"run_dir={trained}", *args]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error


def test_unknown_items_users_and_repeated_interactions_are_refused(
    trained: Path, loaded: Pipeline, tmp_path: Path
) -> None:
    known = loaded.data.interactions
    user, item, at = int(known.user[0]), int(known.item[0]), float(known.time[0])
    n = loaded.data.n_users

    def check(text: str, message: str, force: bool = False) -> None:
        where = str(write(tmp_path, "user,item,timestamp\n" + text))
        entries = read_log(Path(where))
        with pytest.raises(MarlrecError, match=message):
            resolve(loaded, AddedItems(-1), entries, ([], "items.csv"), where, force)

    check("1,nova-9,5\n", "line 2: unknown item 'nova-9'; describe new items in items=")
    check(f"{n + 1},3,5\n", f"line 2: user {n + 1} is new, but new users take the next")
    check("someone,3,5\n", "line 2: user 'someone' is not a user index")
    check("1,3,5\n1,3,5\n", r"line 3: the same interaction \(user, item, timestamp\) is listed")
    check(f"{user},{item},{at!r}\n", "line 2: this interaction .* is already in the run")
    check(f"{user},{item},{at!r}\n", "every interaction of the log is already in the run", True)
    # With force, interactions the run has are left out and the rest are kept.
    entries = read_log(write(tmp_path, f"user,item,timestamp\n{user},{item},{at!r}\n1,3,5\n"))
    kept = resolve(loaded, AddedItems(-1), entries, ([], "items.csv"), "log", True)
    assert kept.skipped == 1 and kept.interactions.item.tolist() == [3]


def test_a_pseudonymised_run_knows_log_users_by_their_outside_ids(
    loaded: Pipeline, tmp_path: Path
) -> None:
    key = b"update-test-key"
    p = dataclasses.replace(loaded, key=key, data=pseudonymise(loaded.data, key))
    entries = read_log(write(tmp_path, "user,item,timestamp\n3,5,1e9\nnewbie,5,1e9\n"))
    resolved = resolve(p, AddedItems(-1), entries, ([], "items.csv"), "log", False)
    n = p.data.n_users
    assert sorted(resolved.interactions.user.tolist()) == [user_index(p.data, key, 3), n]
    assert resolved.new_user_ids == [pseudonym(key, "newbie")]  # never the outside id itself


def test_an_interrupted_update_leaves_the_run_as_it_was(
    run: Path, loaded: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write(tmp_path, new_log(loaded))
    items = write(tmp_path, NEW_ITEMS, "items.csv")
    files = sorted(p.name for p in run.iterdir())
    version = model_version(run)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as Ctrl-C halfway through the fine-tuning

    monkeypatch.setattr(update, "fine_tune", killed)
    with pytest.raises(KeyboardInterrupt):
        update_run(run, log, items, FEW_STEPS)
    monkeypatch.undo()
    assert list((run / "versions").iterdir()) == []  # nothing half-written is left
    assert sorted(p.name for p in run.iterdir()) == sorted([*files, "versions"])

    # Killed once the version is in place but before the pointer moved: still version 0.
    def no_pointer(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(versions, "write_json", no_pointer)
    with pytest.raises(OSError, match="disk full"):
        update_run(run, log, items, FEW_STEPS)
    monkeypatch.undo()
    assert versions.current_version(run) == 0 and model_version(run) == version
    assert load_run(run).data.n_users == loaded.data.n_users
    # The next update takes a number no folder uses.
    assert update_run(run, log, items, FEW_STEPS)["version"] == 2


def test_a_running_service_switches_to_a_new_version_without_a_failed_request(
    run: Path, loaded: Pipeline, tmp_path: Path
) -> None:
    service = Service.from_run(run)
    service.watch(0.05)
    client = TestClient(create_app(service))
    first = client.get("/health").json()["model_version"]
    statuses: list[int] = []
    stop = threading.Event()

    def requests() -> None:
        while not stop.is_set():
            for url in ("/recommend?user=3&k=5", "/explain?history=1,2&k=3", "/health"):
                statuses.append(client.get(url).status_code)

    requester = threading.Thread(target=requests)
    requester.start()
    try:
        items = write(tmp_path, NEW_ITEMS, "items.csv")
        update_run(run, write(tmp_path, new_log(loaded)), items, FEW_STEPS)
        deadline = time.monotonic() + 60
        while service.version == first and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # requests on the new version too
    finally:
        stop.set()
        requester.join()
        service.stop_watching()
    assert statuses and set(statuses) == {200}
    now = client.get("/health").json()["model_version"]
    assert now != first and now == model_version(run) and now.startswith("v1-")
    new_user = client.get(f"/recommend?user={loaded.data.n_users}&k=3")
    assert new_user.status_code == 200 and len(new_user.json()["items"]) == 3


def test_the_update_benchmark_reads_the_test_window_two_ways() -> None:
    # Time order; the window starts at position 3. Movie 6 is unknown to the model.
    ordered = pd.DataFrame({"user": list("abacbac"), "item": list("1234561")})
    first, every = first_in_window(ordered, 3), every_in_window(ordered, 3)
    assert (first.users, first.histories, first.items) == (
        ["c", "b", "a"],
        [[], ["2"], ["1", "3"]],
        ["4", "5", "6"],
    )
    assert every.histories == [[], ["2"], ["1", "3"], ["4"]]  # earlier window items count
    assert every.items == ["4", "5", "6", "1"]

    def rank(histories: list[np.ndarray]) -> np.ndarray:
        """A fixed preference, 5 first, history excluded, padded with -1."""
        rows = [[i for i in (5, 4, 3, 2, 1) if i not in h] for h in histories]
        return np.array([row + [-1] * (5 - len(row)) for row in rows])

    numbers = {str(i): i for i in range(1, 6)}
    one = reading(rank, numbers, first)
    assert one["NDCG@10"] == pytest.approx((1 / np.log2(3) + 1) / 3)  # 4 second, 5 first, miss
    assert (one["HR@10"], one["targets"], one["targets_in_catalog"]) == (2 / 3, 3, 2)
    all_ = reading(rank, numbers, every)
    assert all_["NDCG@10"] == pytest.approx((1 / np.log2(3) + 1 + 1 / np.log2(5)) / 4)
    assert (all_["hits"], all_["targets"], all_["users"]) == (3, 4, 3)

    def seed(update: float, retrain: float) -> dict[str, Any]:
        own = {f"{s}/{m}": 0.1 for s in ("valid", "test") for m in ("NDCG@10", "HR@10")}
        row = {r: {"NDCG@10": 0.0, "HR@10": 0.0} for r in (FIRST, EVERY)}
        models = {m: {**row, "own_split": own} for m in ("base", "retrain", "update")}
        models["update"] = {**row, EVERY: {"NDCG@10": update, "HR@10": 0.0}, "own_split": own}
        models["retrain"] = {**row, EVERY: {"NDCG@10": retrain, "HR@10": 0.0}, "own_split": own}
        return {"figures": models, "seconds": {"base": 4.0, "retrain": 10.0, "update": 1.0}}

    ratio = summary({0: seed(0.1, 0.2), 1: seed(0.3, 0.1)})["update_over_retrain"]
    assert ratio[f"{EVERY}/NDCG@10"]["ratio_of_means"] == pytest.approx(0.4 / 0.3)
    assert ratio[f"{EVERY}/NDCG@10"]["mean_of_ratios"]["mean"] == pytest.approx((0.5 + 3) / 2)
    assert ratio["own_split/valid/NDCG@10"]["ratio_of_means"] == pytest.approx(1.0)


def test_the_update_benchmark_reuses_finished_runs_and_redoes_unfinished_ones(
    tmp_path: Path,
) -> None:
    finished, unfinished = tmp_path / "finished", tmp_path / "unfinished"
    for folder in (finished, unfinished):
        folder.mkdir()
        (folder / "checkpoints").mkdir()
    (finished / DONE).write_text('{"seconds": 3.5, "process": "1-2"}')
    assert completed(finished) == {"seconds": 3.5, "process": "1-2"}
    assert (finished / "checkpoints").is_dir()
    assert completed(unfinished) is None and not unfinished.exists()  # made again from scratch
    assert update_name(UpdateOptions()) == "update"  # other settings never reuse the defaults'
    assert update_name(UpdateOptions(steps=300, lr=0.01)) == "update-steps300-lr0.01"
