"""New users and items without retraining: `add-items`, `recommend` by history or text, and
`POST /items`, on one tiny trained run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from marlrec import cli, io
from marlrec.recommend import ADDED_ITEMS, AddedItems, add_items, load_run, read_items_file
from marlrec.registry import MarlrecError
from marlrec.serve.app import create_app
from marlrec.serve.service import Query, Service

NEW_ITEMS = (
    "id,title,genres\n"
    "nova-1,Zyxqua Orbit Harmonics,space opera\n"
    'nova-2,"Quiet Harbour, Again",drama\n'
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiniest_run: Path) -> Path:
    run = tmp_path_factory.mktemp("add-items") / "run"
    shutil.copytree(tiniest_run, run)  # items are added to this copy
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run that a test may change."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def items_file(tmp_path: Path, text: str, name: str = "new_items.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_add_items_makes_new_items_recommendable(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["add-items", f"run_dir={run}", f"file={items_file(tmp_path, NEW_ITEMS)}"]) == 0
    assert "2 items added" in capsys.readouterr().out
    added = AddedItems.load(run)
    assert added.ids == ["nova-1", "nova-2"]
    assert added.texts[1] == "Quiet Harbour, Again. drama"
    service = Service.from_run(run, batching=False)
    n_items = added.base_items
    assert service.n_items == n_items + 2
    assert torch.equal(added.embeddings, service.p.item_emb[n_items:].cpu())
    # The new item's own words bring it among the candidates the agents rank first.
    candidates = service.p.env.spec.layout.n_candidates
    found = service.answer(Query(k=candidates, text="Zyxqua Orbit Harmonics. space opera"))
    placed = {row.item: row.stage for row in found.placements}
    assert placed.get(n_items) in ("slate", "after_slate")
    # A history holding a new item is a valid new user; what it holds is not served back.
    by_history = service.answer(Query(k=5, history=(n_items, 0)))
    assert len(by_history.placements) == 5
    assert {n_items, 0}.isdisjoint(row.item for row in by_history.placements)


def test_recommend_by_history_and_by_text_from_the_command_line(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["recommend", f"run_dir={trained}", "history=[3,7,11]", "k=4"]) == 0
    shown = capsys.readouterr().out
    assert "top 4 for history [3, 7, 11]" in shown and "score" in shown
    assert cli.main(["recommend", f"run_dir={trained}", "text=a calm story", "k=3"]) == 0
    assert "top 3 for 'a calm story'" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["history=[3,100000]"], "unknown item 100000"),
        (["history=[]"], "history must be a list of item numbers"),
        (["history=abc"], "history must be a list of item numbers"),
        (["text= "], "text is empty"),
        (["user=1", "text=x"], "give one of user, history and text, not user and text"),
        ([], 'missing user=..., history=[...] or text="..."'),
    ],
)
def test_bad_recommend_queries_are_one_line(
    trained: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["recommend", f"run_dir={trained}", *args]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,title\na,One\na,Two\n", "item 2: duplicate id 'a'"),
        ("id,title\na,\n", "item 1 (id a): the title is empty"),
        ("id,title\n,One\n", "item 1: the id is empty"),
        ("id,name\na,One\n", "has no 'title' column"),
        ("id,title\n", "lists no items"),
        ("", "is not a readable CSV file"),
        ('id,title\na,"One\n', "is not a readable CSV file"),
    ],
)
def test_malformed_item_files_are_one_line_errors(
    run: Path, tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = items_file(tmp_path, content)
    with pytest.raises(MarlrecError) as error:
        from marlrec.recommend import item_texts

        item_texts(read_items_file(path), str(path), set())
    assert message in str(error.value) and "\n" not in str(error.value)
    assert cli.main(["add-items", f"run_dir={run}", f"file={path}"]) == 2
    assert message in capsys.readouterr().err
    assert not (run / ADDED_ITEMS).exists()


def test_a_missing_file_and_an_id_added_before_are_one_line_errors(
    run: Path, tmp_path: Path
) -> None:
    with pytest.raises(MarlrecError, match="does not exist"):
        read_items_file(tmp_path / "absent.csv")
    pipeline = load_run(run)
    add_items(run, pipeline, [{"id": "x", "title": "One"}], "first")
    with pytest.raises(MarlrecError, match="second, item 1: duplicate id 'x'"):
        add_items(run, load_run(run), [{"id": "x", "title": "Again"}], "second")


def test_an_interrupted_add_items_leaves_the_run_as_it_was(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = load_run(run)
    add_items(run, pipeline, [{"id": "kept", "title": "Kept"}], "first")
    before = (run / ADDED_ITEMS).read_bytes()
    files = sorted(p.name for p in run.iterdir())

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", fail)  # the failure comes before the final rename
    with pytest.raises(OSError, match="disk full"):
        add_items(run, load_run(run), [{"id": "lost", "title": "Lost"}], "second")
    monkeypatch.undo()
    assert (run / ADDED_ITEMS).read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == files  # no temp file left
    assert AddedItems.load(run).ids == ["kept"]


def test_post_items_serves_them_at_once(run: Path) -> None:
    service = Service.from_run(run, batching=False)
    client = TestClient(create_app(service))
    n_items = service.n_items
    response = client.post(
        "/items", json={"items": [{"id": "p1", "title": "Zyxqua Orbit", "genres": "space"}]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["items"] == [
        {"item": n_items, "id": "p1", "text": "Zyxqua Orbit. space"}
    ]
    k = service.p.env.spec.layout.n_candidates
    found = client.get("/recommend", params={"text": "Zyxqua Orbit. space", "k": k})
    assert n_items in [row["item"] for row in found.json()["items"]]
    assert client.post("/recommend", json={"history": [n_items], "k": 3}).status_code == 200
    again = client.post("/items", json={"items": [{"id": "p1", "title": "Other"}]})
    assert again.status_code == 409 and "duplicate id 'p1'" in again.json()["error"]
    for body in (
        {"items": []},
        {"items": [{"id": "q", "title": " "}]},
        {"items": [{"id": "q", "title": "T", "year": 1999}]},
    ):
        bad = client.post("/items", json=body)
        assert bad.status_code == 422 and set(bad.json()) == {"error"}
    assert torch.equal(AddedItems.load(run).embeddings[0], service.p.item_emb[n_items].cpu())
