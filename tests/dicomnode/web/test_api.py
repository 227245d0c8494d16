"""The JSON API: contents after recorded instances and a job; operator actions."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from sqlalchemy import select

from dicomnode.db.models import Event, Export, ExportState, Job, JobState
from dicomnode.db.queue import JobQueue
from tests.dicomnode.conftest import both_backends

from .conftest import HIDDEN_NAME, NodeState, make_client

pytestmark = both_backends


def test_counts(client: TestClient) -> None:
    assert client.get("/api/counts").json() == {
        "studies": 2, "series": 3, "instances": 16,
        "jobs": {"queued": 0, "running": 0, "done": 1, "failed": 0},
        "exports": {"pending": 1, "sending": 0, "sent": 1, "committed": 0, "failed": 1,
                    "refused": 0},
    }


def test_studies_list(client: TestClient, node_state: NodeState) -> None:
    body = client.get("/api/studies").json()
    by_uid = {s["study_instance_uid"]: s for s in body["studies"]}
    assert list(by_uid) == [node_state.study_b, node_state.study_a]  # newest first
    a = by_uid[node_state.study_a]
    assert a["accession_number"] == "ACC-A"
    assert (a["series_count"], a["instance_count"], a["skipped_series"]) == (2, 10, 1)
    assert (a["status"], a["last_job_state"]) == ("done", "done")
    assert a["exports"] == {"pending": 1, "sending": 0, "sent": 1, "committed": 0, "failed": 1,
                            "refused": 0}
    assert a["last_received_at"].endswith("Z")
    assert by_uid[node_state.study_b]["status"] == "receiving"
    assert client.get("/api/studies?limit=1&offset=1").json()["studies"][0][
        "study_instance_uid"] == node_state.study_a
    assert client.get("/api/studies?limit=0").status_code == 422


def test_study_detail_has_series_with_skip_reasons_and_jobs(
    client: TestClient, node_state: NodeState
) -> None:
    detail = client.get(f"/api/studies/{node_state.study_a}").json()
    series = {s["series_instance_uid"]: s for s in detail["series"]}
    assert series[node_state.scout_series]["state"] == "skipped"
    reason = series[node_state.scout_series]["reason"].lower()
    assert "topogram" in reason or "localizer" in reason or "slices" in reason
    assert series[node_state.chest_series]["state"] == "selected"
    [job] = detail["jobs"]
    assert job["job_id"] == node_state.job_id and job["state"] == "done"
    assert job["summary"]["timings_s"]["lungs"] == 1.5
    kinds = {r["kind"]: r for r in job["results"]}
    assert set(kinds) == {"SEG", "SR"}
    assert [e["destination"] for e in kinds["SEG"]["exports"]] == ["pacs"]
    assert sorted(e["destination"] for e in kinds["SR"]["exports"]) == ["archive", "pacs"]
    assert client.get("/api/studies/1.2.3").status_code == 404


def test_timeline_tells_the_story_in_order(client: TestClient, node_state: NodeState) -> None:
    events = client.get(f"/api/studies/{node_state.study_a}/timeline").json()["events"]
    kinds = [e["kind"] for e in events]
    for earlier, later in [("study-received", "series-received"),
                           ("series-received", "study-complete"),
                           ("study-complete", "job-queued"), ("job-queued", "job-started"),
                           ("job-started", "job-done"), ("job-done", "exported"),
                           ("job-done", "export-failed")]:
        assert kinds.index(earlier) < kinds.index(later), (earlier, later)
    assert "series-skipped" in kinds
    failed = next(e for e in events if e["kind"] == "export-failed")
    assert "Out of resources" in failed["message"] and failed["job_id"] == node_state.job_id


def test_jobs_and_exports(client: TestClient, node_state: NodeState) -> None:
    [job] = client.get("/api/jobs").json()["jobs"]
    assert (job["state"], job["attempts"], job["error"]) == ("done", 1, "")
    assert client.get("/api/jobs?state=failed").json()["jobs"] == []
    assert client.get(f"/api/jobs/{node_state.job_id}").json()["job_id"] == node_state.job_id
    assert client.get("/api/jobs/999").status_code == 404
    failed = client.get("/api/exports?state=failed").json()["exports"]
    assert [e["export_id"] for e in failed] == [node_state.export_ids["failed"]]
    assert failed[0]["last_status"] == 0xA700
    assert failed[0]["attempts"] == 1
    assert "Out of resources" in failed[0]["last_error"]
    both = client.get("/api/exports?state=failed&state=sent").json()["exports"]
    assert len(both) == 2
    assert len(client.get("/api/exports").json()["exports"]) == 3


def test_no_patient_names_anywhere_in_the_api(client: TestClient, node_state: NodeState) -> None:
    for path in ("/api/counts", "/api/studies", f"/api/studies/{node_state.study_a}",
                 f"/api/studies/{node_state.study_a}/timeline", "/api/jobs", "/api/exports"):
        text = json.dumps(client.get(path).json())
        assert HIDDEN_NAME not in text and "Synthetic" not in text and "Other^Person" not in text


def test_retry_endpoint_makes_a_failed_export_pending(fresh_state: NodeState) -> None:
    client = make_client(fresh_state)
    export_id = fresh_state.export_ids["failed"]
    response = client.post(f"/api/exports/{export_id}/retry")
    assert response.status_code == 200
    assert response.json()["export"]["state"] == "pending"
    assert response.json()["export"]["attempts"] == 0
    with fresh_state.sessions() as s:
        assert s.get_one(Export, export_id).state == ExportState.PENDING
        assert "export-requeued" in s.scalars(select(Event.kind)).all()
    assert client.post("/api/exports/9999/retry").status_code == 404
    with fresh_state.sessions() as s, s.begin():
        s.get_one(Export, export_id).state = ExportState.SENDING
    assert client.post(f"/api/exports/{export_id}/retry").status_code == 409


def test_failed_exports_group_by_job_and_destination_and_retry_together(
    fresh_state: NodeState,
) -> None:
    from dicomnode.db.queries.exports import failed_export_groups

    with fresh_state.sessions() as s, s.begin():
        for export in s.scalars(select(Export)):
            export.state, export.attempts = ExportState.FAILED, 5
            export.last_status, export.last_error = 0xA700, "refused"
    with fresh_state.sessions() as s:
        groups = {g.destination: g for g in failed_export_groups(s)}
        by_destination = {d: sorted(s.scalars(select(Export.id).where(Export.destination == d)))
                          for d in groups}
    assert set(groups) == {"pacs", "archive"}
    pacs = groups["pacs"]
    assert pacs.count == 2 and dict(pacs.kinds) == {"SEG": 1, "SR": 1}
    assert pacs.job_id == fresh_state.job_id and pacs.study_instance_uid == fresh_state.study_a
    assert pacs.max_attempts == 5 and pacs.last_status == 0xA700 and pacs.last_error == "refused"
    assert groups["archive"].count == 1

    client = make_client(fresh_state)
    response = client.post(f"/api/jobs/{fresh_state.job_id}/exports/retry",
                           params={"destination": "pacs"})
    assert response.status_code == 200 and response.json()["queued"] == 2
    with fresh_state.sessions() as s:
        states = {i: s.get_one(Export, i).state for ids in by_destination.values() for i in ids}
        events = s.scalars(select(Event.message).where(Event.kind == "export-requeued")).all()
    assert all(states[i] == ExportState.PENDING for i in by_destination["pacs"])
    assert all(states[i] == ExportState.FAILED for i in by_destination["archive"])
    assert "2 to pacs by operator" in events
    again = client.post(f"/api/jobs/{fresh_state.job_id}/exports/retry",
                        params={"destination": "pacs"})
    assert again.status_code == 409
    assert client.post("/api/jobs/9999/exports/retry",
                       params={"destination": "pacs"}).status_code == 404
    assert client.post(f"/api/jobs/{fresh_state.job_id}/exports/retry").status_code == 422


def test_requeue_endpoint(fresh_state: NodeState) -> None:
    client = make_client(fresh_state)
    response = client.post(f"/api/jobs/{fresh_state.job_id}/requeue")
    assert response.status_code == 200 and response.json()["job"]["state"] == "queued"
    JobQueue(fresh_state.sessions, max_attempts=3).claim("other:2", lease_s=60)
    with fresh_state.sessions() as s:
        assert s.get_one(Job, fresh_state.job_id).state == JobState.RUNNING
    assert client.post(f"/api/jobs/{fresh_state.job_id}/requeue").status_code == 409
    assert client.post("/api/jobs/9999/requeue").status_code == 404
