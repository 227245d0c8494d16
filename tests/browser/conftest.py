"""Fixtures of the browser tests: one node that has processed the real COVID-CT-MD P002 study,
its web app (OHIF included) and headless Chromium driven by Playwright.

The node runs as ``dicomnode serve`` (``tests/integration/node_process.py``) with the web app
on, user authentication (a radiologist and an operator, added with ``dicomnode users add``; the
machine token for programs), dcmtk ``storescp`` as the PACS its results are exported to and an
Orthanc that receives the SRs (the radiologists' review SRs among them).
A missing viewer, browser or peer fails the run with the command that fixes it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.integration.node_process import NodeProcess
from tests.peers.dcmtk import StorescpPeer, storescu
from tests.peers.orthanc import OrthancError, OrthancPeer, find_plugin
from tests.peers.ports import free_port
from tests.peers.processes import MissingPeerError, find_tool
from tests.peers.studies import PreparedSeries

from .ohif import CHROMIUM_ARGS, CHROMIUM_PATH, SKIP_TOUR_SCRIPT, WINDOW_SIZE, save_screenshot

OHIF_DIST = Path("vendor") / "ohif" / "dist"
JOB_TIMEOUT_S = 300.0
EXPORT_TIMEOUT_S = 120.0
WEB_START_TIMEOUT_S = 30.0
SAVE_SCREENSHOTS_ENV = "DICOMNODE_SAVE_SCREENSHOTS"
DOCS_SCREENSHOTS = Path("docs") / "screenshots"
# No classifier: the lesion localizer seeds on patchy opacities inside the lungs, so the real
# COVID-19 study gets lesions without trained weights.
PIPELINE_SETTINGS = {
    "lung_segmentation": "morphological",
    "classifier": "none",
    "localize_lesions": True,
}
SEG_SERIES_DESCRIPTION = "AI lung/lesion segmentation"
REPORT_SERIES_DESCRIPTION = "AI chest CT measurement report"
VIEWER_SR_SERIES_DESCRIPTION = "AI findings for viewers (outlines)"
# The web users of the node: name -> (role, password).
USERS = {"rita": ("radiologist", "rita-radiologist-pw"), "otto": ("operator", "otto-operator-pw")}

_PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    item.stash.setdefault(_PHASE_REPORTS, {})[report.when] = report


def _failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(_PHASE_REPORTS, {}).values())


@dataclass(frozen=True)
class ProcessedStudy:
    """The node after it processed and exported one study, and how to reach its web app."""

    node: NodeProcess
    base_url: str
    token: str  # the machine token: read-only API, DICOMweb and /metrics, header only
    study_uid: str
    summary: dict[str, Any]
    results: dict[str, list[str]] = field(default_factory=dict)  # kind -> SOP Instance UIDs
    orthanc: OrthancPeer | None = None  # receives every SR of the node

    def login(self, page: Page, name: str = "otto") -> None:
        """Sign ``page`` in as ``name`` through the login form."""
        page.goto(f"{self.base_url}/login")
        page.fill("#username", name)
        page.fill("#password", USERS[name][1])
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{self.base_url}/node/")

    @property
    def lesion_count(self) -> int:
        return len(self.summary.get("lesions") or [])


def _require_tool(name: str) -> None:
    try:
        find_tool(name)
    except MissingPeerError as exc:
        pytest.fail(str(exc), pytrace=False)


def _wait_for_web(base_url: str, node: NodeProcess) -> None:
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    node.wait_for(healthy, WEB_START_TIMEOUT_S, "the web app answering /healthz")


def _finished_job(node: NodeProcess) -> tuple[str, str, str] | None:
    rows = node.query("select state, coalesce(error, ''), coalesce(summary, '') from jobs")
    for state, error, summary in rows:
        if state in ("done", "failed"):
            return state, error, summary
    return None


def _require_orthanc() -> None:
    _require_tool("Orthanc")
    try:
        find_plugin("libOrthancDicomWeb.so")
        find_plugin("libOrthancGdcm.so")
    except OrthancError as exc:
        pytest.fail(str(exc), pytrace=False)


def _add_users(node: NodeProcess) -> None:
    """The node's web users, added as an administrator would (``dicomnode users add``)."""
    for name, (role, password) in USERS.items():
        done = subprocess.run(
            [sys.executable, "-m", "dicomnode", "users", "add", name, "--role", role,
             "--password-stdin", "--config", str(node.config_path)],
            input=password + "\n", capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def ohif_dist(repo_root: Path) -> Path:
    """The prebuilt OHIF viewer the node serves at ``/``."""
    dist = repo_root / OHIF_DIST
    if not (dist / "index.html").is_file():
        pytest.fail(
            f"the OHIF viewer is not installed ({dist / 'index.html'} missing): run "
            "deploy/fetch-ohif.sh (CI fetches it in .ci/install-system.sh)",
            pytrace=False,
        )
    return dist


@pytest.fixture(scope="session")
def processed_study(
    ohif_dist: Path, covid_study: PreparedSeries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessedStudy]:
    """One node with its web app that received COVID-CT-MD P002 by C-STORE, analysed it
    (SEG with lungs and lesions, SR, viewer SR, overlay) and exported every result."""
    for tool in ("storescu", "storescp", "echoscu"):
        _require_tool(tool)
    _require_orthanc()
    work = tmp_path_factory.mktemp("browser-node")
    token = secrets.token_urlsafe(24)
    web_port = free_port()
    orthanc = OrthancPeer(work_dir=work / "orthanc", stop_grace_s=1.0)
    orthanc.work_dir.mkdir()
    with StorescpPeer(out_dir=work / "pacs") as pacs, orthanc:
        node = NodeProcess(
            work / "node",
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": pacs.host,
                           "port": pacs.port},
                          {"name": "orthanc", "ae_title": orthanc.aet, "host": orthanc.host,
                           "port": orthanc.dicom_port, "objects": ["SR"]}],
            sections={
                "web": {"enabled": True, "host": "127.0.0.1", "port": web_port, "auth": "users",
                        "token": token, "ohif_dir": str(ohif_dist),
                        "base_url": f"http://127.0.0.1:{web_port}"},
                "pipeline": PIPELINE_SETTINGS,
            },
        )
        _add_users(node)
        with node:
            base_url = f"http://127.0.0.1:{web_port}"
            _wait_for_web(base_url, node)
            sent = storescu(covid_study.files, node.host, node.port, node.ae_title)
            assert sent.returncode == 0, sent.stderr[-2000:]
            state, error, summary = node.wait_for(
                lambda: _finished_job(node), JOB_TIMEOUT_S, "the job of the study")
            assert state == "done", f"job {state}: {error}\n{node.log_tail()}"
            node.wait_for(
                lambda: not node.query("select 1 from exports where state != 'sent'"),
                EXPORT_TIMEOUT_S, "every export sent")
            results: dict[str, list[str]] = {}
            for kind, sop_uid in node.query("select kind, sop_instance_uid from result_objects"):
                results.setdefault(kind, []).append(sop_uid)
            yield ProcessedStudy(
                node=node, base_url=base_url, token=token,
                study_uid=covid_study.study_instance_uid, summary=json.loads(summary),
                results=results, orthanc=orthanc,
            )


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless (never a browser downloaded by ``playwright install``)."""
    if not CHROMIUM_PATH.is_file():
        pytest.fail(
            f"{CHROMIUM_PATH} not found: install Debian's chromium "
            "(apt-get install chromium; CI does it in .ci/install-system.sh)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM_PATH), args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshot_dirs(tmp_path_factory: pytest.TempPathFactory,
                    repo_root: Path) -> tuple[Path, Path | None]:
    """Where screenshots go: a test tmp folder, and ``docs/screenshots`` when
    ``DICOMNODE_SAVE_SCREENSHOTS=1`` (so ordinary runs leave the checkout clean)."""
    docs = repo_root / DOCS_SCREENSHOTS if os.environ.get(SAVE_SCREENSHOTS_ENV) == "1" else None
    return tmp_path_factory.mktemp("screenshots"), docs


@pytest.fixture
def shoot(screenshot_dirs: tuple[Path, Path | None]) -> Callable[[Page, str], Path]:
    """``shoot(page, "name")`` saves a screenshot of the whole page."""
    out_dir, docs_dir = screenshot_dirs

    def take(page: Page, name: str) -> Path:
        return save_screenshot(page, out_dir, name, docs_dir)

    return take


@pytest.fixture
def page(chromium: Browser, request: pytest.FixtureRequest,
         screenshot_dirs: tuple[Path, Path | None]) -> Iterator[Page]:
    """A fresh browser context and page (empty storage, tour dismissed). When the test fails,
    the page's screenshot and its console are saved next to the other screenshots and the
    console is printed."""
    context = chromium.new_context(viewport=WINDOW_SIZE)
    context.add_init_script(SKIP_TOUR_SCRIPT)
    new_page = context.new_page()
    console: list[str] = []
    started = time.monotonic()

    def on_console(message: ConsoleMessage) -> None:
        console.append(f"{time.monotonic() - started:7.2f} {message.type}: {message.text}")

    new_page.on("console", on_console)
    new_page.on("pageerror", lambda exc: console.append(
        f"{time.monotonic() - started:7.2f} pageerror: {exc}"))
    try:
        yield new_page
    finally:
        if _failed(request.node):
            out_dir = screenshot_dirs[0]
            name = f"FAILED-{request.node.name}"
            try:
                new_page.screenshot(path=str(out_dir / f"{name}.png"))
            except Exception as exc:  # noqa: BLE001 - the failure itself matters more
                console.append(f"(no screenshot: {exc})")
            (out_dir / f"{name}.console.txt").write_text("\n".join(console) + "\n")
            print(f"browser console of {request.node.name} (screenshot in {out_dir}):")
            print("\n".join(console[-200:]))
        context.close()

