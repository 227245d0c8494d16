"""Remote workers over DICOMweb with real peers: the node on PostgreSQL with ``workers = 0``, two
``dicomnode worker --node-url`` processes each in its own empty folder (no database, no shared
files), Orthanc as the PACS. Three small phantom studies are sent; the worker holding the
first claimed job is killed with SIGKILL mid-job; every study still gets exactly one SEG and
one report SR in Orthanc, and the killed job completes once, on its second attempt.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from tests.peers.dcmtk import storescu
from tests.peers.ports import free_port
from training.dicom_writer import write_series
from training.synthetic.phantom import generate_case

from .node_process import REPO, NodeProcess
from .test_end_to_end import MAIN_SR_SERIES_NUMBER, SEG_CLASS, SR_CLASS, results_in_pacs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "remote-worker-test-token-0123456789"
RESULT_TIMEOUT_S = 240.0


def phantom_studies(root: Path, count: int) -> list[tuple[str, list[Path]]]:
    """``count`` small synthetic chest CTs (128 x 128, 4 mm slices), each its own study."""
    studies = []
    for n in range(count):
        case = generate_case(20 + n, kind="covid", matrix=128, slice_spacing_mm=4.0)
        study_uid = generate_uid()
        files = write_series(case.hu, case.spacing_mm, root / f"study{n}",
                             study_instance_uid=study_uid, patient_id=f"PHANTOM{n}")
        studies.append((study_uid, files))
    return studies


class RemoteWorker:
    """``python -m dicomnode worker --node-url ...`` in its own empty folder."""

    def __init__(self, folder: Path, endpoints: list[str]) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.log_path = folder / "worker.log"
        config = folder / "worker.toml"
        config.write_text(
            "[pipeline]\nlung_segmentation = \"morphological\"\nclassifier = \"none\"\n"
            "localize_lesions = false\nthreads = 1\noverlay = false\n"
            "[worker]\npoll_interval_s = 0.2\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
        env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomnode", "worker", "--config", str(config),
                 *endpoints, "--token", TOKEN, "--work-dir", str(folder / "scratch"),
                 "--heartbeat-s", "1"],
                cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def holds(self, transaction_uid: str) -> bool:
        return transaction_uid in self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def test_two_remote_workers_one_killed_every_study_gets_one_seg_and_one_sr(
    orthanc, postgres_url: str, tmp_path: Path
) -> None:
    studies = phantom_studies(tmp_path / "studies", 3)
    web_port = free_port()
    node = NodeProcess(
        tmp_path / "node",
        destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": orthanc.host,
                       "port": orthanc.dicom_port, "objects": ["SEG", "SR"]}],
        sections={
            "node": {"workers": 0, "database_url": postgres_url},
            "worker": {"lease_s": 4.0, "heartbeat_s": 1.0},
            "web": {"enabled": True, "host": "127.0.0.1", "port": web_port, "auth": "token",
                    "token": TOKEN, "ohif_dir": str(tmp_path / "no-viewer")},
        },
    )
    db = create_engine(postgres_url)

    def rows(sql: str) -> list:
        with db.connect() as conn:
            return list(conn.execute(text(sql)))

    workers: list[RemoteWorker] = []
    with node:
        try:
            url = f"http://127.0.0.1:{web_port}"
            # a: the node's own shortcut; b: as a performer of any UPS-RS provider
            workers = [
                RemoteWorker(tmp_path / "worker-a", ["--node-url", url]),
                RemoteWorker(tmp_path / "worker-b", ["--ups-url", f"{url}/dicom-web",
                                                     "--stow-url", f"{url}/dicom-web"]),
            ]
            for _study, files in studies:
                sent = storescu(files, node.host, node.port, node.ae_title)
                assert sent.returncode == 0, sent.stderr[-2000:]
            held = node.wait_for(
                lambda: rows("select id, lease_owner from jobs where state = 'running' "
                             "and lease_owner like 'ups:%'"),
                120, "a job claimed by a remote worker",
            )
            killed_job, owner = held[0]
            victim = node.wait_for(
                lambda: next((w for w in workers if w.holds(owner.removeprefix("ups:"))), None),
                10, "the claim in a worker's log",
            )
            victim.kill()
            for study_uid, _files in studies:
                node.wait_for(
                    lambda s=study_uid: (lambda r: r[SEG_CLASS] and r[SR_CLASS])(
                        results_in_pacs(orthanc, s)),
                    RESULT_TIMEOUT_S, f"SEG and SR of study {study_uid} in the PACS",
                )
            time.sleep(2.0)  # anything sent twice would have arrived by now
            for study_uid, _files in studies:
                found = results_in_pacs(orthanc, study_uid)
                assert len(found[SEG_CLASS]) == 1, study_uid
                numbers = [int(orthanc.simplified_tags(i.orthanc_id)["SeriesNumber"])
                           for i in found[SR_CLASS]]
                assert numbers.count(MAIN_SR_SERIES_NUMBER) == 1, (study_uid, numbers)
                recorded = {u for (u,) in rows(
                    "select r.sop_instance_uid from result_objects r join jobs j "
                    "on r.job_id = j.id join studies s on j.study_id = s.id "
                    f"where s.study_instance_uid = '{study_uid}' and r.kind in ('SEG', 'SR')")}
                assert {i.sop_instance_uid for i in found[SEG_CLASS] + found[SR_CLASS]} \
                    == recorded
            jobs = {job_id: (state, attempts) for job_id, state, attempts in rows(
                "select id, state, attempts from jobs")}
            assert len(jobs) == 3 and all(state == "done" for state, _ in jobs.values())
            assert jobs[killed_job] == ("done", 2)
            survivor = next(w for w in workers if w is not victim)
            assert survivor.proc.poll() is None
            assert sorted(p.name for p in survivor.folder.iterdir()) == [
                "scratch", "worker.log", "worker.toml"]
            assert list((survivor.folder / "scratch").iterdir()) == []
        finally:
            for worker in workers:
                worker.stop()
            db.dispose()
