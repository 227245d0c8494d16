"""Faults with real peers: a killed worker, a killed node, a PACS that is down, bad instances."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from tests.peers.dcmtk import echoscu, storescu
from tests.peers.processes import find_tool, peer_env
from tests.peers.studies import make_large_series

from .node_process import NodeProcess
from .test_end_to_end import SEG_CLASS, SR_CLASS, node_for, results_in_pacs, wait_for_results

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_killed_worker_job_completes_once(orthanc, covid_study, tmp_path) -> None:
    with node_for(orthanc, tmp_path / "node") as node:
        sent = storescu(covid_study.files, node.host, node.port, node.ae_title)
        assert sent.returncode == 0, sent.stderr[-2000:]
        node.wait_for(lambda: node.query("select 1 from jobs where state = 'running'"),
                      60, "job running")
        (pid,) = node.worker_pids()
        subprocess.run(["kill", "-9", str(pid)], check=True)
        results = wait_for_results(orthanc, node, covid_study.study_instance_uid)
        time.sleep(2.0)  # anything sent twice would have arrived by now
        results = results_in_pacs(orthanc, covid_study.study_instance_uid)
        # exactly the node's own result objects, each once: no duplicates from the killed run
        for sop_class, kind in ((SEG_CLASS, "SEG"), (SR_CLASS, "SR")):
            in_pacs = sorted(i.sop_instance_uid for i in results[sop_class])
            recorded = sorted(u for (u,) in node.query(
                "select sop_instance_uid from result_objects where kind = ?", (kind,)))
            assert in_pacs == recorded and len(recorded) >= 1
        assert len(results[SEG_CLASS]) == 1
        # SEG and SR are exported while the overlay is rendered: the job finishes after them
        node.wait_for(lambda: node.query("select 1 from jobs where state = 'done'"),
                      120, "job done")
        ((state, attempts),) = node.query("select state, attempts from jobs")
        assert state == "done" and attempts == 2
        assert node.worker_pids() and node.worker_pids() != [pid]  # restarted


def _acknowledged(storescu_output: str) -> list[str]:
    """Files storescu saw a success response for (its -v log: 'Sending file' ... 'Success')."""
    acked, current = [], None
    for line in storescu_output.splitlines():
        m = re.search(r"Sending file: (\S+)", line)
        if m:
            current = m.group(1)
        elif "Received Store Response" in line and "Success" in line and current:
            acked.append(current)
            current = None
    return acked


def test_node_killed_mid_transfer_keeps_every_acknowledged_instance(covid_study, tmp_path) -> None:
    big = make_large_series(covid_study.directory, tmp_path / "big", n=300)
    node = NodeProcess(tmp_path / "node", sections={"node": {"workers": 0}}).start()
    output: dict[str, str] = {}

    def send() -> None:
        args = [str(find_tool("storescu")), "-v", "-xs", "-aec", node.ae_title,
                node.host, str(node.port), *map(str, big)]
        done = subprocess.run(args, capture_output=True, text=True, env=peer_env(), timeout=300)
        output["log"] = done.stdout + done.stderr

    sender = threading.Thread(target=send)
    sender.start()
    try:
        node.wait_for(lambda: node.query("select count(*) from instances")[0][0] >= 60,
                      120, "60 instances stored")
    finally:
        node.kill_all()  # kill -9, node and workers together
    sender.join(timeout=120)
    acked = _acknowledged(output["log"])
    assert 60 <= len(acked) < 300, "the node died mid-transfer"
    # The durability point is the synced spool file: every acknowledged instance is there,
    # whole, right after the kill (its row may still have been waiting for the group commit).
    spool = {p.stem: p for p in (node.data_dir / "spool").glob("*/*/*.dcm")}
    for path in acked:
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert sop in spool, f"acknowledged instance {sop} is not in the spool"
        assert pydicom.dcmread(spool[sop]).PixelData == pydicom.dcmread(path).PixelData
    with node:  # restarts on the same data: re-indexed, partial files removed, nothing lost
        rows = dict(node.query("select sop_instance_uid, path from instances"))
        for path in acked:
            sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert sop in rows, f"acknowledged instance {sop} has no row after the restart"
            stored = pydicom.dcmread(node.data_dir / rows[sop])
            assert stored.PixelData == pydicom.dcmread(path).PixelData
        assert not list((node.data_dir / "tmp").glob("*.part"))
        rest = storescu(big, node.host, node.port, node.ae_title)
        assert rest.returncode == 0
        node.wait_for(lambda: node.query("select count(*) from instances")[0][0] == 300, 10,
                      "all 300 instances recorded")
        assert node.query("select count(*) from series") == [(1,)]  # nothing half-read indexed


def test_pacs_down_then_up_results_delivered(orthanc, covid_study, tmp_path) -> None:
    with node_for(orthanc, tmp_path / "node") as node:
        orthanc.stop()
        sent = storescu(covid_study.files, node.host, node.port, node.ae_title)
        assert sent.returncode == 0
        node.wait_for(
            lambda: node.query("select 1 from exports where attempts >= 2 and state='pending'"),
            120, "export retries while the PACS is down",
        )
        orthanc.start()
        results = wait_for_results(orthanc, node, covid_study.study_instance_uid)
        assert len(results[SEG_CLASS]) == 1 and 1 <= len(results[SR_CLASS]) <= 2
        kinds = [k for (k,) in node.query("select kind from events")]
        assert "export-retry" in kinds and "exported" in kinds


def test_broken_and_path_escaping_uids_refused_node_stays_up(covid_study, tmp_path) -> None:
    source = pydicom.dcmread(covid_study.files[0])
    cases = {
        "bare-uuid-study": ("StudyInstanceUID", "896911bf-1143-4c8d-8f04-f3cd1a7f6204"),
        "escaping-series": ("SeriesInstanceUID", "1.2.3/../../../../tmp/dicomnode-escape-probe"),
        "empty-series": ("SeriesInstanceUID", ""),
    }
    with NodeProcess(tmp_path / "node", sections={"node": {"workers": 0}}) as node:
        for name, (keyword, value) in cases.items():
            ds = source.copy()
            setattr(ds, keyword, value)
            path = tmp_path / f"{name}.dcm"
            ds.save_as(path)
            result = storescu([path], node.host, node.port, node.ae_title, extra_args=["-v"])
            log = result.stdout + result.stderr
            assert "Received Store Response (Error: CannotUnderstand)" in log, log[-1500:]
            assert echoscu(node.host, node.port, node.ae_title).returncode == 0
        refusals = [ln for ln in node.log_tail(200).splitlines() if "refused instance" in ln]
        assert len(refusals) == 3 and all("0xC221" in ln for ln in refusals)
        assert node.query("select count(*) from instances") == [(0,)]
        assert not Path("/tmp/dicomnode-escape-probe").exists()
        good = storescu([covid_study.files[0]], node.host, node.port, node.ae_title)
        assert good.returncode == 0
        node.wait_for(lambda: node.query("select count(*) from instances") == [(1,)], 10,
                      "the good instance's row")


def test_original_covid_ct_md_files_are_refused(tmp_path) -> None:
    """The files exactly as their authors exported them (empty SOP Instance UID)."""
    src = sorted((SHARED / "covid-ct-md" / "series" / "CAP" / "cap002").glob("*.dcm"))[:3]
    with NodeProcess(tmp_path / "node", sections={"node": {"workers": 0}}) as node:
        result = storescu(src, node.host, node.port, node.ae_title, extra_args=["-v"])
        assert result.returncode != 0
        assert node.query("select count(*) from instances") == [(0,)]
        assert echoscu(node.host, node.port, node.ae_title).returncode == 0
