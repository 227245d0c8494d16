"""A radiologist's verdict in the browser: signed in, the study page's form records it, the
review SR reaches Orthanc (VERIFIED, the radiologist as verifying observer, referencing the AI
report and the lesion segments of the AI SEG). An operator cannot record one. Logging out ends
the session on the server: the old cookie is refused. Runs after the other browser tests of
the shared node (file order), as it adds objects to the study."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page
from pydicom import dcmread

from .conftest import ProcessedStudy

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.browser]

Shoot = Callable[[Page, str], Path]
REVIEW_SERIES_DESCRIPTION = "Radiologist review of AI results"
ORTHANC_TIMEOUT_S = 60.0


def _job_id(study: ProcessedStudy) -> int:
    ((job_id,),) = study.node.query("select id from jobs")
    return int(job_id)


def _review_sr_in_orthanc(study: ProcessedStudy) -> bytes | None:
    assert study.orthanc is not None
    for inst in study.orthanc.instances_of_study(study.study_uid):
        if inst.modality != "SR":
            continue
        tags = study.orthanc.simplified_tags(inst.orthanc_id)
        if tags.get("SeriesDescription") == REVIEW_SERIES_DESCRIPTION:
            return study.orthanc.request("GET", f"/instances/{inst.orthanc_id}/file")[0]
    return None


def test_a_radiologist_records_a_verdict_that_reaches_orthanc(
    processed_study: ProcessedStudy, page: Page, shoot: Shoot
) -> None:
    study = processed_study
    lesions = [lesion["number"] for lesion in study.summary["lesions"]]
    assert lesions, "the study's job found no lesion to review"
    study.login(page, "rita")
    page.goto(f"{study.base_url}/node/studies/{study.study_uid}")
    form = page.locator("form.verdict-form")
    form.locator('input[name="classification"][value="disagree"]').check()
    for number in lesions:
        answer = "accept" if number == lesions[0] else "reject"
        form.locator(f'input[name="lesion-{number}"][value="{answer}"]').check()
    form.locator('input[name="missed_findings"]').fill("1")
    form.locator('textarea[name="comment"]').fill("one more opacity, right lower lobe")
    shoot(page, "node-verdict-form")
    form.get_by_role("button", name="Record verdict").click()
    page.wait_for_url(f"**/node/studies/{study.study_uid}?*")
    assert page.locator(".notice-ok", has_text="recorded; its review SR is queued").count() == 1
    assert page.locator(".verdict").filter(has_text="Verdict by rita").count() == 1

    deadline = time.monotonic() + ORTHANC_TIMEOUT_S
    raw = _review_sr_in_orthanc(study)
    while raw is None and time.monotonic() < deadline:
        time.sleep(1.0)
        raw = _review_sr_in_orthanc(study)
    assert raw is not None, f"no review SR in Orthanc\n{study.node.log_tail()}"
    sr = dcmread(io.BytesIO(raw))
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "rita"
    composite = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                 for i in sr.ContentSequence if i.ValueType == "COMPOSITE"]
    assert len(composite) == 1 and composite[0] in study.results["SR"]
    reviews = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER"]
    assert len(reviews) == len(lesions)
    segment_refs = [c.ReferencedSOPSequence[0] for r in reviews for c in r.ContentSequence
                    if c.ValueType == "IMAGE"]
    assert {ref.ReferencedSOPInstanceUID for ref in segment_refs} == set(study.results["SEG"])
    assert all("ReferencedSegmentNumber" in ref for ref in segment_refs)


def test_an_operator_cannot_record_a_verdict(processed_study: ProcessedStudy,
                                              page: Page) -> None:
    study = processed_study
    study.login(page, "otto")
    page.goto(f"{study.base_url}/node/studies/{study.study_uid}")
    assert page.locator("form.verdict-form").count() == 0
    refused = page.request.post(f"{study.base_url}/api/jobs/{_job_id(study)}/verdict",
                                data={"classification": "agree"})
    assert refused.status == 403


def test_logout_ends_the_session(processed_study: ProcessedStudy, page: Page,
                                 chromium: Browser) -> None:
    study = processed_study
    study.login(page, "otto")
    cookies = page.context.cookies()
    assert page.request.get(f"{study.base_url}/api/counts").status == 200
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login")
    replay = chromium.new_context()
    try:
        replay.add_cookies(cookies)  # type: ignore[arg-type]
        assert replay.request.get(f"{study.base_url}/api/counts").status == 401
    finally:
        replay.close()
