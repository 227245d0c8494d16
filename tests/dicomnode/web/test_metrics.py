"""/metrics parsed with the Prometheus client's own parser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from dicomnode.db.models import Job, JobState
from dicomnode.db.queue import JobQueue
from dicomnode.web.app import create_app
from tests.dicomnode.conftest import both_backends

from .conftest import STAGE_TIMINGS_S, NodeState, make_client

pytestmark = both_backends


@dataclass(frozen=True)
class Scrape:
    families: dict[str, Any]

    def value(self, family: str, sample: str | None = None, **labels: str) -> float:
        for s in self.families[family].samples:
            if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in
                                                   labels.items()):
                return float(s.value)
        raise KeyError((family, sample, labels))


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape({f.name: f for f in text_string_to_metric_families(response.text)})


def test_metrics_counts(client: TestClient, node_state: NodeState) -> None:
    m = scrape(client)
    assert m.families["dicomnode_instances_received"].type == "counter"
    assert m.value("dicomnode_instances_received", "dicomnode_instances_received_total") == 16
    assert m.value("dicomnode_studies") == 2
    assert m.value("dicomnode_jobs", state="done") == 1
    assert m.value("dicomnode_jobs", state="queued") == 0
    assert m.value("dicomnode_exports", state="failed") == 1
    assert m.value("dicomnode_exports", state="sent") == 1
    assert m.value("dicomnode_exports", state="pending") == 1
    assert m.value("dicomnode_export_failures", "dicomnode_export_failures_total") == 1
    assert m.value("dicomnode_info", version="0.1.0") == 1
    assert "dicomnode_receiver_up" not in m.families  # this app was not told about one


def test_stage_and_job_durations(client: TestClient) -> None:
    m = scrape(client)
    hist = m.families["dicomnode_stage_seconds"]
    assert hist.type == "histogram"
    for stage, seconds in STAGE_TIMINGS_S.items():
        assert m.value("dicomnode_stage_seconds", "dicomnode_stage_seconds_count",
                       stage=stage) == 1
        assert m.value("dicomnode_stage_seconds", "dicomnode_stage_seconds_sum",
                       stage=stage) == seconds
    assert m.value("dicomnode_stage_seconds", "dicomnode_stage_seconds_bucket",
                   stage="lungs", le="1.0") == 0
    assert m.value("dicomnode_stage_seconds", "dicomnode_stage_seconds_bucket",
                   stage="lungs", le="2.5") == 1
    assert m.value("dicomnode_job_seconds", "dicomnode_job_seconds_count") == 1
    # A second scrape reads no job twice.
    again = scrape(client)
    assert again.value("dicomnode_stage_seconds", "dicomnode_stage_seconds_count",
                       stage="lungs") == 1


def test_a_rerun_job_is_observed_again(fresh_state: NodeState) -> None:
    client = make_client(fresh_state)
    before = scrape(client)
    assert before.value("dicomnode_job_seconds", "dicomnode_job_seconds_count") == 1
    queue = JobQueue(fresh_state.sessions, max_attempts=3)
    queue.requeue(fresh_state.job_id)
    ticket = queue.claim("test:2", lease_s=60)
    assert ticket is not None
    queue.complete(ticket.job_id, "test:2", [], {"timings_s": {"lungs": 3.0}}, [])
    after = scrape(client)
    assert after.value("dicomnode_job_seconds", "dicomnode_job_seconds_count") == 2
    assert after.value("dicomnode_stage_seconds", "dicomnode_stage_seconds_sum",
                       stage="lungs") == 4.5
    assert after.value("dicomnode_jobs", state="done") == 1
    with fresh_state.sessions() as s:
        assert s.scalar(select(Job.state)) == JobState.DONE




def test_receiver_up_gauge(node_state: NodeState) -> None:
    for alive in (True, False):
        app = create_app(node_state.settings, node_state.sessions, node_state.storage,
                         receiver_alive=lambda alive=alive: alive)
        assert scrape(make_client(node_state, app)).value("dicomnode_receiver_up") == int(alive)


def test_verdicts_by_call(fresh_state: NodeState) -> None:
    client = make_client(fresh_state)
    before = scrape(client)  # the fixture job's summary has no verdict block
    assert before.families["dicomnode_verdicts"].type == "gauge"
    for call in ("positive", "negative", "indeterminate", "not assessed", "not run"):
        assert before.value("dicomnode_verdicts", call=call) == 0
    with fresh_state.sessions() as s, s.begin():
        job = s.get_one(Job, fresh_state.job_id)
        job.summary = {**(job.summary or {}),
                       "verdict": {"call": "not assessed", "statement": "outside"}}
    after = scrape(client)
    assert after.value("dicomnode_verdicts", call="not assessed") == 1
    assert after.value("dicomnode_verdicts", call="positive") == 0
