"""Operations that heal themselves, with the node as a real process: no orphaned worker after
kill -9 of `dicomnode serve`; a malformed PatientBirthDate (not a date) neither fails the job
nor appears anywhere (database, log, API, pages, result objects), on PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.peers.dcmtk import storescu
from tests.peers.ports import free_port

from .node_process import NodeProcess
from .test_end_to_end import SEG_CLASS, SR_CLASS, node_for, wait_for_results

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORPHAN_GONE_S = 8.0
# Not a date (like 'notadate'), and letters no page or log line holds by chance: a parser's
# error quotes a prefix of it ('QXZJ'), so the prefix is searched for too.
MALFORMED = "QXZJBADD"
TOKEN = "healing-test-token"
TABLES = ("studies", "series", "instances", "jobs", "result_objects", "exports", "events")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in state  # a zombie has exited; only its entry waits to be reaped


def test_worker_exits_when_serve_is_killed(tmp_path) -> None:
    node = NodeProcess(tmp_path / "node").start()
    try:
        (worker,) = node.wait_for(node.worker_pids, 60, "the worker process")
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGKILL)  # the supervisor only, not its group
        node.proc.wait()
        deadline = time.monotonic() + ORPHAN_GONE_S
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(worker), f"worker {worker} outlived its supervisor by {ORPHAN_GONE_S} s"
    finally:
        node.kill_all()


def _with_malformed_birth_date(files: list[Path], out_dir: Path) -> list[Path]:
    out_dir.mkdir()
    written = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.add_new(0x00100030, "DA", MALFORMED)  # PatientBirthDate
        written.append(out_dir / path.name)
        ds.save_as(written[-1])
    return written


def _everything_the_node_shows(node: NodeProcess, web: str, study_uid: str) -> str:
    rows = [repr(node.query(f"select * from {table}")) for table in TABLES]  # noqa: S608
    auth = {"Authorization": f"Bearer {TOKEN}"}
    pages = [
        httpx.get(f"{web}{path}", headers=auth, timeout=30).text
        for path in ("/api/counts", "/api/studies", f"/api/studies/{study_uid}",
                     f"/api/studies/{study_uid}/timeline", "/api/jobs", "/api/exports",
                     "/node/", f"/node/studies/{study_uid}", "/healthz")
    ]
    return "\n".join(rows + pages + [node.log_path.read_text(errors="replace")])


def test_malformed_birth_date_neither_fails_the_job_nor_leaks(
    orthanc, covid_study, postgres_url, tmp_path
) -> None:
    files = _with_malformed_birth_date(covid_study.files, tmp_path / "study")
    web_port = free_port()
    sections = {
        "node": {"database_url": postgres_url},
        "web": {"enabled": True, "host": "127.0.0.1", "port": web_port, "token": TOKEN},
    }
    with node_for(orthanc, tmp_path / "node", **sections) as node:
        sent = storescu(files, node.host, node.port, node.ae_title)
        assert sent.returncode == 0, sent.stderr[-2000:]
        results = wait_for_results(orthanc, node, covid_study.study_instance_uid)
        ((state, error),) = node.query("select state, error from jobs")
        assert state == "done" and error == ""
        shown = _everything_the_node_shows(
            node, f"http://127.0.0.1:{web_port}", covid_study.study_instance_uid
        )
        assert covid_study.study_instance_uid in shown  # the grep reads real output
        assert MALFORMED[:4] not in shown
        for inst in results[SEG_CLASS] + results[SR_CLASS]:
            assert MALFORMED[:4].encode() not in orthanc.get_file(inst.orthanc_id)
