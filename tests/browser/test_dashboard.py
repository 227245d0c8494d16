"""The operators' pages in a real browser: the dashboard lists the processed study, its page
shows the timeline from reception to export and opens the viewer, and nothing is shown
without signing in (login form for pages, 401 for programs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page

from . import ohif
from .conftest import USERS, ProcessedStudy

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.browser]

Shoot = Callable[[Page, str], Path]
TIMELINE_KINDS = ("study-received", "study-complete", "job-queued", "job-started",
                  "results-handed-off", "job-done", "exported")


def _tile(page: Page, label: str) -> int:
    """The number on the dashboard tile labelled exactly ``label``."""
    tile = page.locator(".tile").filter(has=page.get_by_text(label, exact=True))
    assert tile.count() == 1, f"{tile.count()} tiles labelled {label!r}"
    return int(tile.locator(".tile-number").inner_text())


def _viewer_study(href: str | None) -> str:
    """The study UID a ``/viewer?StudyInstanceUIDs=`` link opens ("" for any other link)."""
    if href is None:
        return ""
    parts = urlsplit(href)
    if parts.path != "/viewer":
        return ""
    return parse_qs(parts.query).get("StudyInstanceUIDs", [""])[0]


def test_dashboard_lists_the_processed_study(
    processed_study: ProcessedStudy, page: Page, shoot: Shoot
) -> None:
    study = processed_study
    study.login(page, "otto")
    page.goto(f"{study.base_url}/node/")
    assert urlsplit(page.url).path == "/node/"
    (sent,) = study.node.query("select count(*) from exports where state = 'sent'")[0]
    assert sent > 0
    assert _tile(page, "studies") == 1
    assert _tile(page, "jobs done") == 1
    assert _tile(page, "jobs failed") == 0
    assert _tile(page, "exports sent") == sent
    assert _tile(page, "exports failed") == 0

    row = page.locator("section.panel", has_text="Studies").locator("tbody tr").filter(
        has=page.locator(f'code[title="{study.study_uid}"]'))
    assert row.count() == 1
    assert row.locator(".state").first.inner_text() == "done"
    assert row.get_by_text(f"{sent} sent").count() == 1
    view = row.get_by_role("link", name="View")
    assert _viewer_study(view.get_attribute("href")) == study.study_uid
    shoot(page, "node-dashboard")


def test_study_page_shows_timeline_and_opens_viewer(
    processed_study: ProcessedStudy, page: Page, shoot: Shoot
) -> None:
    study = processed_study
    study.login(page, "otto")
    page.goto(f"{study.base_url}/node/studies/{study.study_uid}")
    assert urlsplit(page.url).path == f"/node/studies/{study.study_uid}"
    kinds = [k.strip() for k in page.locator("ol.timeline .event-kind").all_inner_texts()]
    for kind in TIMELINE_KINDS:
        assert kind in kinds, f"{kind} missing from the timeline {kinds}"
    # SEG and SR are handed to the exporter before the overlay is rendered, so the first
    # "exported" may come before "job-done"; it never comes before the hand-off.
    assert kinds.index("study-received") < kinds.index("results-handed-off") < (
        kinds.index("exported"))
    summary = page.locator("dl.summary")
    assert summary.get_by_text("Lesions").count() == 1
    lesions = summary.locator("div", has_text="Lesions").locator("dd").inner_text()
    assert int(lesions) == study.lesion_count
    kinds_listed = {t.strip() for t in page.locator("article.job .tag").all_inner_texts()}
    assert {"SEG", "SR", "OVERLAY"} <= kinds_listed
    # one line per result series; the exports of the job are grouped into at most two
    # timeline entries: those sent while the overlay was rendered, and those after job-done
    (sent,) = study.node.query("select count(*) from exports where state = 'sent'")[0]
    (overlays,) = study.node.query(
        "select count(*) from result_objects where kind = 'OVERLAY'")[0]
    assert page.locator("table.results", has_text=f"{overlays} objects").count() == 1
    entries = page.locator("ol.timeline li.event-exported")
    counts = []
    for i in range(entries.count()):
        folded = entries.nth(i).locator(".event-count")
        counts.append(int(folded.inner_text().lstrip("×")) if folded.count() else 1)
    assert 1 <= len(counts) <= 2 and sum(counts) == sent, counts
    shoot(page, "node-study")

    link = page.get_by_role("link", name="Open in viewer")
    href = link.get_attribute("href")
    assert href is not None and href.startswith("/viewer?StudyInstanceUIDs=")
    assert _viewer_study(href) == study.study_uid
    # The session cookie alone authorises the viewer and its DICOMweb requests.
    link.click()
    ohif.wait_for_image(page)
    assert _viewer_study(page.url.removeprefix(study.base_url)) == study.study_uid


def test_nothing_without_signing_in(processed_study: ProcessedStudy, page: Page,
                                   shoot: Shoot) -> None:
    study = processed_study
    page.goto(f"{study.base_url}/node/")
    parts = urlsplit(page.url)
    assert parts.path == "/login"
    assert parse_qs(parts.query).get("next") == ["/node/"]
    assert page.get_by_text(study.study_uid).count() == 0
    for path in ("/api/studies", f"/dicom-web/studies/{study.study_uid}/series", "/metrics"):
        response = page.request.get(f"{study.base_url}{path}")
        assert response.status == 401, f"{path}: {response.status}"
    viewer = page.request.get(
        ohif.viewer_url(study.base_url, study.study_uid), headers={"Accept": "text/html"},
        max_redirects=0)
    assert viewer.status == 303 and viewer.headers["location"].startswith("/login?next=")

    for path in ("/api/studies", "/metrics"):  # the machine token only in a header
        assert page.request.get(f"{study.base_url}{path}?token={study.token}").status == 401
        assert page.request.get(f"{study.base_url}{path}", headers={
            "Authorization": f"Bearer {study.token}"}).status == 200

    page.fill("#username", "otto")
    page.fill("#password", "not-the-password")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_text("Those credentials are not valid.").count() == 1
    shoot(page, "node-login-refused")

    page.fill("#username", "otto")
    page.fill("#password", USERS["otto"][1])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{study.base_url}/node/")
    assert page.locator("section.panel", has_text="Studies").locator(
        f'code[title="{study.study_uid}"]').count() == 1
