"""/healthz reports the real state: each failing check named, 503 when degraded."""

from __future__ import annotations

from dataclasses import replace

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from dicomnode.db.models import Export
from dicomnode.web.app import create_app
from tests.dicomnode.conftest import both_backends

from .conftest import NodeState

pytestmark = both_backends


def _health(state: NodeState, settings=None, sessions=None, **kwargs) -> tuple[int, dict]:
    app = create_app(settings or state.settings, sessions or state.sessions, state.storage,
                     **kwargs)
    response = TestClient(app).get("/healthz")
    assert response.headers["cache-control"] == "no-store"
    return response.status_code, response.json()


def test_healthy_node_says_ok(node_state: NodeState) -> None:
    no_destinations = replace(node_state.settings, destinations=())
    code, body = _health(node_state, no_destinations, receiver_alive=lambda: True,
                         workers_alive=lambda: (2, 2))
    assert code == 200 and body["status"] == "ok" and body["failed"] == []
    assert body["checks"]["workers"] == {"ok": True, "stalled_jobs": 0, "alive": 2,
                                         "configured": 2}
    assert body["checks"]["disk"]["free_mb"] > 0


def test_each_degradation_is_named(node_state: NodeState) -> None:
    with node_state.sessions() as s:
        failed_to = s.scalar(select(Export.destination).where(
            Export.id == node_state.export_ids["failed"]))
    code, body = _health(node_state)  # the fixture's node has one export that failed for good
    assert code == 503 and body["failed"] == ["destinations"]
    assert body["checks"]["destinations"]["failing"] == [failed_to]

    quiet = replace(node_state.settings, destinations=())
    full = replace(quiet, node=replace(quiet.node, min_free_disk_mb=1 << 40))
    code, body = _health(node_state, full, receiver_alive=lambda: False,
                         workers_alive=lambda: (0, 1))
    assert code == 503 and body["failed"] == ["disk", "receiver", "workers"]
    assert body["checks"]["disk"]["reserve_mb"] == 1 << 40

    unreachable = sessionmaker(create_engine("sqlite:////nonexistent-dir/x.sqlite"))
    code, body = _health(node_state, quiet, sessions=unreachable)
    assert code == 503 and body["failed"] == ["database", "destinations", "workers"]
    assert body["checks"]["database"] == {"ok": False, "error": "database unreachable"}
