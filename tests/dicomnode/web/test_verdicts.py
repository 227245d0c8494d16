"""Verdicts through the API and the study page's form, their review SR and exports, and the
local validation figures on a handful of verdicts counted by hand."""

from __future__ import annotations

from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from sqlalchemy import select

from dicomnode.db.models import Event, Export, Job, ResultObject, Verdict

from .conftest import NodeState
from .users import add_verdicts as _add_verdicts
from .users import logged_in, users_app

LESIONS = [{"number": 1, "side": "left", "volume_ml": 2.0},
           {"number": 2, "side": "right", "volume_ml": 1.0}]
VERDICT = {"classification": "disagree", "findings": {"1": "accept", "2": "reject"},
           "missed_findings": 1, "comment": "GGO in the right lower lobe missed"}


def _with_lesions(state: NodeState) -> None:
    with state.sessions() as s, s.begin():
        job = s.get_one(Job, state.job_id)
        job.summary = {**(job.summary or {}), "lesions": LESIONS,
                       "classification": {"label": "covid19", "p_covid": 0.91,
                                          "model": {"name": "decovnet", "version": "1.1"}}}


def test_a_radiologist_records_a_verdict_and_its_sr_is_queued(fresh_state: NodeState) -> None:
    _with_lesions(fresh_state)
    rita = logged_in(users_app(fresh_state), "rita")
    response = rita.post(f"/api/jobs/{fresh_state.job_id}/verdict", json=VERDICT)
    assert response.status_code == 200, response.text
    verdict = response.json()["verdict"]
    assert verdict["user_name"] == "rita" and verdict["classification"] == "disagree"
    assert verdict["models"]["primary"] == {"name": "decovnet", "version": "1.1",
                                            "label": "covid19", "p_covid": 0.91}
    with fresh_state.sessions() as s:
        obj = s.scalars(select(ResultObject).where(ResultObject.kind == "VERDICT")).one()
        destinations = sorted(s.scalars(select(Export.destination)
                                        .where(Export.result_object_id == obj.id)))
        audit = s.scalars(select(Event.message).where(Event.kind == "action-verdict")).one()
    assert destinations == ["archive", "pacs"]  # both take SRs
    assert audit.startswith("rita: verdict")
    sr = dcmread(fresh_state.storage.absolute(obj.path))
    assert sr.SOPInstanceUID == verdict["sr_sop_instance_uid"]
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "rita"
    assert sr.StudyInstanceUID == fresh_state.study_a
    referenced = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for item in sr.ContentSequence if item.ValueType == "COMPOSITE"]
    assert referenced == [fresh_state.sr_uid]
    listed = rita.get(f"/api/jobs/{fresh_state.job_id}/verdicts").json()["verdicts"]
    assert [v["verdict_id"] for v in listed] == [verdict["verdict_id"]]
    page = rita.get(f"/node/studies/{fresh_state.study_a}").text
    assert "Verdict by rita" in page and "lesion 2 reject" in page
    dashboard = rita.get("/node/").text
    assert "<strong>covid19</strong>" in dashboard and "verdict-disagree" in dashboard
    assert "2020-03-15" in dashboard  # the study date, read from a stored header
    assert '<span class="tag">VERDICT</span>' in dashboard  # results counted per kind


def test_only_radiologists_record_verdicts(fresh_state: NodeState) -> None:
    _with_lesions(fresh_state)
    app = users_app(fresh_state)
    for name in ("otto", "ada"):
        refused = logged_in(app, name).post(f"/api/jobs/{fresh_state.job_id}/verdict",
                                            json=VERDICT)
        assert refused.status_code == 403
    assert "verdict-form" not in logged_in(app, "otto").get(
        f"/node/studies/{fresh_state.study_a}").text


def test_bad_verdicts_are_refused(fresh_state: NodeState) -> None:
    _with_lesions(fresh_state)
    rita = logged_in(users_app(fresh_state), "rita")
    url = f"/api/jobs/{fresh_state.job_id}/verdict"
    assert rita.post(url, json={**VERDICT, "classification": "maybe"}).status_code == 422
    assert rita.post(url, json={**VERDICT, "missed_findings": -1}).status_code == 422
    assert rita.post(url, json={**VERDICT, "findings": {"7": "accept"}}).status_code == 409
    assert rita.post(url, json={**VERDICT, "comment": "x" * 5000}).status_code == 422
    assert rita.post("/api/jobs/9999/verdict", json=VERDICT).status_code == 404


def test_the_verdict_form_of_the_study_page(fresh_state: NodeState) -> None:
    _with_lesions(fresh_state)
    rita = logged_in(users_app(fresh_state), "rita")
    page = rita.get(f"/node/studies/{fresh_state.study_a}").text
    assert 'name="lesion-1"' in page and 'name="lesion-2"' in page
    back = f"/node/studies/{fresh_state.study_a}"
    done = rita.post(f"/node/jobs/{fresh_state.job_id}/verdict", follow_redirects=False,
                     data={"classification": "agree", "lesion-1": "accept",
                           "lesion-2": "accept", "missed_findings": "0", "next": back})
    assert done.status_code == 303 and "notice=verdict-recorded" in done.headers["location"]
    with fresh_state.sessions() as s:
        row = s.scalars(select(Verdict)).one()
    assert row.findings == {"1": "accept", "2": "accept"} and row.user_name == "rita"


# --- validation ------------------------------------------------------------------------------

def test_validation_figures_by_hand(fresh_state: NodeState) -> None:
    nov, dec = datetime(2026, 11, 5), datetime(2026, 12, 1)
    _add_verdicts(fresh_state, [
        # primary says covid, reader agrees: truth positive (TP); shadow says normal (FN)
        ("covid19", "agree", "normal", {"1": "accept", "2": "reject"}, 0, nov),
        # primary covid, reader disagrees: truth negative (FP); shadow normal (TN)
        ("covid19", "disagree", "normal", {"1": "reject"}, 0, nov),
        # primary normal, reader agrees: truth negative (TN); shadow covid (FP)
        ("normal", "agree", "covid19", {}, 0, dec),
        # primary normal, reader disagrees: truth positive (FN); shadow covid (TP)
        ("normal", "disagree", "covid19", {}, 2, dec),
        # primary covid, agree: TP; shadow covid: TP
        ("covid19", "agree", "covid19", {"1": "accept"}, 1, dec),
    ])
    client = logged_in(users_app(fresh_state), "otto")
    report = client.get("/api/validation").json()
    assert report["verdicts"] == 5
    primary, shadow = report["models"]
    assert primary["role"] == "primary" and primary["model"] == "decovnet@1"
    assert (primary["tp"], primary["fp"], primary["tn"], primary["fn"]) == (2, 1, 1, 1)
    assert primary["sensitivity"] == round(2 / 3, 4)
    assert primary["specificity"] == 0.5
    assert primary["ppv"] == round(2 / 3, 4)
    assert (primary["lesions_reviewed"], primary["lesions_accepted"]) == (4, 2)
    assert primary["accepted_lesion_share"] == 0.5 and primary["missed_findings"] == 3
    assert primary["by_month"]["2026-11"]["verdicts"] == 2
    assert primary["by_month"]["2026-12"]["tp"] == 1
    assert shadow["model"] == "cnn-bert@2"
    assert (shadow["tp"], shadow["fp"], shadow["tn"], shadow["fn"]) == (2, 1, 1, 1)
    page = client.get("/node/validation").text
    assert "decovnet@1" in page and "cnn-bert@2" in page


def test_validation_gauges_on_metrics(fresh_state: NodeState) -> None:
    _add_verdicts(fresh_state, [
        ("covid19", "agree", None, {"1": "accept", "2": "reject"}, 1, datetime(2026, 12, 1)),
        ("covid19", "disagree", None, {}, 0, datetime(2026, 12, 2)),
    ])
    text = logged_in(users_app(fresh_state), "otto").get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def gauge(name: str) -> float:
        (value,) = [s.value for s in families[name].samples
                    if s.labels == {"role": "primary", "model": "decovnet@1"}]
        return float(value)

    assert gauge("dicomnode_validation_verdicts") == 2
    assert gauge("dicomnode_validation_ppv") == 0.5
    assert gauge("dicomnode_validation_accepted_lesion_share") == 0.5
    assert gauge("dicomnode_validation_missed_findings") == 1
    assert gauge("dicomnode_validation_sensitivity") == 1.0  # 1 TP, 0 FN
    assert gauge("dicomnode_validation_specificity") == 0.0  # 0 TN, 1 FP
