"""Operators' pages: dashboard, study page with its timeline, retry button."""

from __future__ import annotations

import re
from html import unescape

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from dicomnode.db.models import Export, ExportState, Job, Series
from dicomnode.web import pages
from tests.dicomnode.conftest import both_backends

from .conftest import HIDDEN_NAME, NodeState, make_client

pytestmark = both_backends


def test_dashboard_shows_counts_studies_jobs_and_failed_exports(
    client: TestClient, node_state: NodeState
) -> None:
    response = client.get("/node/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert re.search(r'tile-alert"><span class="tile-number">1</span><span class="tile-label">'
                     r"exports failed", html)
    assert f'href="/node/studies/{node_state.study_a}"' in html
    assert f'href="/node/studies/{node_state.study_b}"' in html
    # failed exports are listed per job and destination, with one button for all of them
    failed = node_state.export_ids["failed"]
    with node_state.sessions() as session:
        destination = session.get_one(Export, failed).destination
    assert (f'action="/node/jobs/{node_state.job_id}/retry-exports?destination={destination}'
            f'&next=/node/"') in html
    row = re.search(r'<tr class="row-failed">\s*<td><a href="/node/studies/([^"]+)">', html)
    assert row is not None and row.group(1) == node_state.study_a
    assert "Retry 1<" in html
    assert "0xA700" in html and "Out of resources" in html
    assert HIDDEN_NAME not in html


def test_study_page(client: TestClient, node_state: NodeState) -> None:
    html = client.get(f"/node/studies/{node_state.study_a}").text
    assert f'href="/viewer?StudyInstanceUIDs={node_state.study_a}"' in html
    timeline = html[html.index('class="timeline"'):html.index("<h2>Series</h2>")]
    kinds = re.findall(r'class="event-kind">([^<]+)<', timeline)
    assert kinds[0] == "study-received"
    assert {"study-complete", "job-done", "exported", "export-failed"} <= set(kinds)
    assert "localizer/scout images" in html  # the topogram's skip reason
    assert node_state.seg_uid in html and node_state.sr_uid in html  # result objects (titles)
    assert html.count('class="button button-retry"') == 1  # only the failed export
    assert "p(COVID-19) 0.91" in html and "lungs 1.5 s" in html
    assert HIDDEN_NAME not in html
    missing = client.get("/node/studies/1.2.3")
    assert missing.status_code == 404 and "no study 1.2.3" in missing.text


def test_values_are_escaped(fresh_state: NodeState) -> None:
    with fresh_state.sessions() as s, s.begin():
        s.execute(update(Series).where(Series.series_instance_uid == fresh_state.scout_series)
                  .values(skip_reason="<script>alert(1)</script>"))
    html = make_client(fresh_state).get(f"/node/studies/{fresh_state.study_a}").text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_retry_button_sends_a_failed_export_again(fresh_state: NodeState) -> None:
    client = make_client(fresh_state)
    export_id = fresh_state.export_ids["failed"]
    back = f"/node/studies/{fresh_state.study_a}"
    pressed = client.post(f"/node/exports/{export_id}/retry?next={back}", follow_redirects=False)
    assert pressed.status_code == 303
    assert pressed.headers["location"] == f"{back}?notice=export-retried&id={export_id}"
    with fresh_state.sessions() as s:
        assert s.get_one(Export, export_id).state == ExportState.PENDING
    page = client.get(pressed.headers["location"]).text
    assert f"Export {export_id} queued to be sent again." in page
    assert 'class="button button-retry"' not in page
    refused = client.post("/node/exports/999/retry", follow_redirects=False)
    assert "notice=refused" in refused.headers["location"]
    assert "export 999 not found" in unescape(client.get(refused.headers["location"]).text)


def test_retry_all_button_sends_a_jobs_failed_exports_again(fresh_state: NodeState) -> None:
    client = make_client(fresh_state)
    failed = fresh_state.export_ids["failed"]
    with fresh_state.sessions() as s:
        destination = s.get_one(Export, failed).destination
    pressed = client.post(
        f"/node/jobs/{fresh_state.job_id}/retry-exports?destination={destination}&next=/node/",
        follow_redirects=False)
    assert pressed.status_code == 303
    page = client.get(pressed.headers["location"]).text
    assert f"1 failed export(s) of job {fresh_state.job_id} queued to be sent again." in page
    assert "Failed exports" not in page
    with fresh_state.sessions() as s:
        assert s.get_one(Export, failed).state == ExportState.PENDING
    again = client.post(
        f"/node/jobs/{fresh_state.job_id}/retry-exports?destination={destination}",
        follow_redirects=False)
    assert "notice=refused" in again.headers["location"]
    assert "has no failed export" in unescape(client.get(again.headers["location"]).text)


def test_requeue_button(fresh_state: NodeState) -> None:
    client = make_client(fresh_state)
    pressed = client.post(f"/node/jobs/{fresh_state.job_id}/requeue", follow_redirects=False)
    assert pressed.status_code == 303
    assert f"Job {fresh_state.job_id} queued to run again." in \
        client.get(pressed.headers["location"]).text


def test_root_and_viewer_without_ohif(client: TestClient) -> None:
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/node/"
    assert client.get("/").text.count("<h1>Dashboard</h1>") == 1
    viewer = client.get("/viewer?StudyInstanceUIDs=1.2.3")
    assert viewer.status_code == 503
    assert "deploy/fetch-ohif.sh" in viewer.text
    assert client.get("/app-config.js").status_code == 404


def test_page_size_paging(node_state: NodeState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "STUDIES_PER_PAGE", 1)
    client = make_client(node_state)
    first = client.get("/node/").text
    second = client.get("/node/?offset=1").text
    assert f"/node/studies/{node_state.study_b}" in first and "older →" in first
    assert f'href="/node/studies/{node_state.study_a}"><code' in second and "← newer" in second


NOT_ASSESSED = {"call": "not assessed", "statement": "outside the validated domain: not assessed",
                "p_covid_calibrated": 1.0, "p_covid_raw": 1.0, "in_validated_domain": False}


def give_verdict(state: NodeState, verdict: dict[str, object]) -> None:
    """The fixture job's summary as the pipeline now writes it: a verdict beside a confident
    classification."""
    with state.sessions() as s, s.begin():
        job = s.get_one(Job, state.job_id)
        job.summary = {**(job.summary or {}), "verdict": verdict,
                       "classification": {"label": "covid19", "p_covid": 1.0}}


def test_dashboard_and_study_page_show_the_verdict(fresh_state: NodeState) -> None:
    client = make_client(fresh_state)
    older = client.get("/node/").text  # a job without a verdict block shows as before
    assert "<strong>covid</strong>" in older and "0.91" in older
    give_verdict(fresh_state, NOT_ASSESSED)
    html = client.get("/node/").text
    assert '<strong class="ai-call">not assessed</strong>' in html
    assert "outside the validated domain: not assessed" in html
    assert "covid19" not in html and "1.00" not in html
    study = client.get(f"/node/studies/{fresh_state.study_a}").text
    assert '<strong class="ai-call">not assessed</strong>' in study
    assert "outside the validated domain" in study
    assert "p(COVID-19) 1.00" not in study and "<strong>covid19</strong>" not in study
    job = client.get(f"/api/jobs/{fresh_state.job_id}").json()
    assert job["summary"]["verdict"]["call"] == "not assessed"


def test_a_malformed_verdict_block_falls_back_to_the_classification(
    fresh_state: NodeState,
) -> None:
    give_verdict(fresh_state, {"call": "<b>maybe</b>", "statement": "x"})
    html = make_client(fresh_state).get("/node/").text
    assert "<strong>covid19</strong>" in html and "maybe" not in html
