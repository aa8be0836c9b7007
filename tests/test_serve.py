"""The FastAPI service over a tiny trained run: routes, errors, metrics and explanations."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from marlrec.recommend import recommend_for
from marlrec.serve.app import create_app
from marlrec.serve.batching import MicroBatcher
from marlrec.serve.ranking import Placement, ServedRanking
from marlrec.serve.service import Query, Service
from tests.conftest import cli_env

TINIEST = [
    "experiment=quick",
    "data.n_users=60",
    "data.n_items=120",
    "trainer.show_progress=false",
    "trainer.max_epochs=1",
    "trainer.epoch_num_env_steps=64",
    "trainer.imitation_steps=10",
    "trainer.test_episodes=2",
    "eval.sessions=4",
    "baseline=[]",
    "retrieval=content",  # items reach a slate by their text: new ones too (add-items)
]


@pytest.fixture(scope="module")
def run_dir(tiniest_run: Path) -> Path:
    return tiniest_run


@pytest.fixture(scope="module")
def service(run_dir: Path) -> Service:
    return Service.from_run(run_dir)


@pytest.fixture(scope="module")
def client(service: Service) -> TestClient:
    return TestClient(create_app(service))


def items(response: object) -> list[int]:
    return [row["item"] for row in response.json()["items"]]  # type: ignore[attr-defined]


def test_recommend_by_user_is_recommend_for(client: TestClient, service: Service) -> None:
    response = client.get("/recommend", params={"user": 3, "k": 7})
    assert response.status_code == 200
    assert items(response) == [row["item"] for row in recommend_for(service.p, 3, 7)]
    body = response.json()
    assert body["model_version"] == service.version
    assert {"item", "text", "placed_by", "score"} == set(body["items"][0])


def test_post_by_history_matches_the_user_it_copies(client: TestClient, service: Service) -> None:
    history = service.histories[5].tolist()
    by_history = client.post("/recommend", json={"history": history, "k": 5})
    by_user = client.get("/recommend", params={"user": 5, "k": 5})
    assert by_history.status_code == 200 and items(by_history) == items(by_user)
    assert not set(items(by_history)) & set(history)
    joined = ",".join(map(str, history))
    assert items(client.get("/recommend", params={"history": joined, "k": 5})) == items(by_user)


def test_recommend_by_text_finds_items_like_it(client: TestClient, service: Service) -> None:
    title = service.p.data.item_text[11]
    response = client.post("/recommend", json={"text": title, "k": 10})
    assert response.status_code == 200 and len(items(response)) == 10
    assert 11 in items(client.get("/recommend", params={"text": title, "k": 40}))
    explained = client.get("/explain", params={"text": title, "k": 3}).json()["items"]
    assert all(row["nearest_history"] == [] for row in explained)  # a text has no history


def test_responses_do_not_list_the_history(client: TestClient, service: Service) -> None:
    body = client.get("/recommend", params={"user": 2, "k": 5}).json()
    served = {row["item"] for row in body["items"]}
    assert set(body) == {"model_version", "items"}
    assert not served & set(service.histories[2].tolist())


def test_explanations_carry_role_score_rank_and_nearest_history(service: Service) -> None:
    client = TestClient(create_app(Service(service.p, service.version, expose_history=True)))
    body = client.get("/explain", params={"user": 4, "k": 8}).json()
    roles = set(service.p.env.spec.roles)
    slate_size = len(service.p.env.core.turn_order)
    history = set(service.histories[4].tolist())
    for position, row in enumerate(body["items"]):
        assert row["stage"] == ("slate" if position < slate_size else row["stage"])
        assert row["placed_by"] in roles | {"retrieval"}
        assert isinstance(row["score"], float) and row["rank"] >= 1
        assert row["nearest_history"] and {n["item"] for n in row["nearest_history"]} <= history
        similarities = [n["similarity"] for n in row["nearest_history"]]
        assert similarities == sorted(similarities, reverse=True)
    assert body["items"][0]["reward_terms"].get("click") == pytest.approx(1.0)
    assert items(client.get("/recommend", params={"user": 4, "k": 8})) == [
        row["item"] for row in body["items"]
    ]


def test_health_has_status_and_version_only(client: TestClient, run_dir: Path) -> None:
    response = client.get("/health")
    assert response.json() == {"status": "ok", "model_version": response.json()["model_version"]}
    assert str(run_dir) not in response.text and "/" not in response.text


def test_metrics_count_requests_per_route(client: TestClient) -> None:
    client.get("/health")
    client.get("/recommend", params={"user": "abc"})
    text = client.get("/metrics").text
    assert 'marlrec_requests_total{route="/health",status="200"}' in text
    assert 'marlrec_errors_total{route="/recommend"}' in text
    assert 'marlrec_request_seconds_bucket{le="0.005",route="/health"}' in text


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"user": 10_000}, 404),
        ({"user": -1}, 404),
        ({"user": "abc"}, 422),
        ({"user": "NaN"}, 422),
        ({"user": 1, "k": 0}, 400),
        ({"user": 1, "k": 121}, 400),
        ({"user": 1, "k": "ten"}, 422),
        ({"history": "1,2,x"}, 422),
        ({"history": "1,500"}, 400),
        ({"text": "   "}, 400),
        ({}, 400),
        ({"user": 1, "text": "space"}, 400),
    ],
)
def test_bad_requests_are_one_line_4xx(
    client: TestClient, params: dict[str, object], status: int
) -> None:
    response = client.get("/recommend", params=params)  # type: ignore[arg-type]
    assert response.status_code == status
    assert set(response.json()) == {"error"} and "\n" not in response.json()["error"]


def test_bad_json_bodies_are_one_line_4xx(client: TestClient) -> None:
    nan = client.post(
        "/recommend", content=b'{"user": NaN}', headers={"content-type": "application/json"}
    )
    unknown = client.post("/recommend", json={"history": [1, -3]})
    fractional = client.post("/recommend", json={"user": 2.5})
    boolean = client.post("/recommend", json={"user": True})
    typo = client.post("/recommend", json={"user": 1, "kk": 5})
    statuses = [r.status_code for r in (nan, unknown, fractional, boolean, typo)]
    assert statuses == [422, 400, 422, 422, 422]
    assert typo.json() == {"error": "kk: Extra inputs are not permitted"}
    assert set(nan.json()) == {"error"} == set(unknown.json()) == set(boolean.json())


def test_micro_batches_rank_like_single_requests(service: Service) -> None:
    histories = [(service.histories[u], 6, -1) for u in range(8)]
    alone = [service._rank_many([job])[0] for job in histories]
    assert_same_placements(service._rank_many(histories), alone)


def test_known_users_rank_alike_from_their_kept_retrieval(run_dir: Path) -> None:
    service = Service.from_run(run_dir, batching=False)
    assert set(service.ranking._kept) == set(range(service.n_users))  # kept at load
    by_history = service._rank_many([(service.histories[u], 8, -1) for u in range(6)])
    assert_same_placements(
        service._rank_many([(service.histories[u], 8, u) for u in range(6)]), by_history
    )
    # Beyond its capacity the least recently asked go first; they are retrieved again.
    service.ranking.capacity = 2
    service._rank_many([(service.histories[u], 8, u) for u in (4, 0)])
    assert list(service.ranking._kept) == [4, 0]
    mixed = service._rank_many([(service.histories[u], 8, u) for u in range(6)])
    assert_same_placements(mixed, by_history)


def test_the_most_active_users_are_kept_when_not_all_fit(service: Service) -> None:
    ranking = ServedRanking(service.p, service.ranking.ranker.scorer)
    ranking.capacity = 3
    ranking.keep_known(service.histories)
    lengths = [len(h) for h in service.histories]
    most_active = sorted(range(len(lengths)), key=lambda u: (-lengths[u], u))[:3]
    assert list(ranking._kept) == most_active[::-1]  # the most active last to be dropped


def assert_same_placements(got: list[list[Placement]], expected: list[list[Placement]]) -> None:
    key = [[(p.item, p.stage, p.scored_by, p.rank) for p in rows] for rows in got]
    assert key == [[(p.item, p.stage, p.scored_by, p.rank) for p in rows] for rows in expected]
    scores = [p.score for rows in got for p in rows]
    assert scores == pytest.approx([p.score for rows in expected for p in rows], abs=1e-5)


def test_requests_that_arrive_together_share_a_pass() -> None:
    passes: list[list[int]] = []

    def double(queries: list[int]) -> list[int]:
        passes.append(queries)
        return [q * 2 for q in queries]

    batcher = MicroBatcher(double, max_batch=4)

    async def requests() -> tuple[list[int], int]:
        together = await asyncio.gather(*(batcher.submit(n) for n in range(6)))
        return together, await batcher.submit(9)

    assert asyncio.run(requests()) == ([0, 2, 4, 6, 8, 10], 18)
    assert passes == [[0, 1, 2, 3], [4, 5], [9]]  # at most max_batch a pass; a lone one alone


def test_a_failed_pass_fails_its_requests_and_the_next_pass_runs() -> None:
    def run(queries: list[int]) -> list[int]:
        if 0 in queries:
            raise ValueError("no zero")
        return queries

    batcher = MicroBatcher(run)

    async def requests() -> tuple[list[object], int]:
        failed = await asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True)
        return failed, await batcher.submit(2)

    failed, later = asyncio.run(requests())
    assert [type(f) for f in failed] == [ValueError, ValueError] and later == 2


def test_concurrent_requests_get_their_own_answers(service: Service) -> None:
    async def tops() -> list[list[int]]:
        queries = [Query(k=5, user=user) for user in range(24)]
        answers = await asyncio.gather(*(service.answer_soon(q) for q in queries))
        return [[row.item for row in answer.placements] for answer in answers]

    expected = [[r["item"] for r in recommend_for(service.p, u, 5)] for u in range(24)]
    assert asyncio.run(tops()) == expected


def test_a_port_in_use_is_a_one_line_error(run_dir: Path, offline_cache: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "marlrec.cli", "serve", f"run_dir={run_dir}", f"port={port}"],
            capture_output=True,
            text=True,
            env=cli_env(offline_cache),
            timeout=120,
        )
    assert result.returncode != 0
    assert result.stderr.strip() == f"marlrec: port {port} on 127.0.0.1 is in use"


def test_docs_describe_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/explain", "/health", "/metrics"} <= set(paths)
    assert client.get("/docs").status_code == 200
    assert np.isfinite(client.get("/recommend", params={"user": 0}).json()["items"][0]["score"])
