"""Export throughput: result objects per second from the node's exporter to Orthanc.

Each run queues one job's results (a SEG, an SR and N overlay images of 512 x 512 RGB, the size
the overlay writer produces for a CT) and times the exporter until every object is stored, for
several ``max_associations``. No confirmation: this is the C-STORE path alone. dcmtk's
storescu sending the same files on one association is the reference row.

    python -m benchmarks.export [--objects 130] [--associations 1,2,4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from benchmarks._common import format_table, machine_line
from dicomnode.config import Destination, ExportSettings
from dicomnode.db.engine import open_database
from dicomnode.db.exports import ExportLog
from dicomnode.db.models import Export, ExportState, Job, Series, Study
from dicomnode.delivering.exporter import Exporter
from tests.dicomnode.results_factory import add_results
from tests.peers.dcmtk import storescu
from tests.peers.orthanc import OrthancPeer

STUDY_UID = "1.2.826.0.1.3680043.10.1400.1"


def _queue_job(work: Path, objects: int) -> tuple[sessionmaker[Session], Path]:
    data = work / "data"
    data.mkdir(parents=True)
    _engine, sessions = open_database(f"sqlite:///{data / 'dicomnode.sqlite'}")
    with sessions() as session, session.begin():
        study = Study(study_instance_uid=STUDY_UID)
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_instance_uid=STUDY_UID + ".1")
        session.add(series)
        session.flush()
        job = Job(study_id=study.id, series_id=series.id, fingerprint="bench", instance_count=1)
        session.add(job)
        session.flush()
        job_id = job.id
    add_results(sessions, data, job_id, ["SEG", "SR"] + ["OVERLAY"] * objects, ["pacs"],
                size=512)
    return sessions, data


def one_run(work: Path, objects: int, associations: int) -> float:
    sessions, data = _queue_job(work, objects)
    with OrthancPeer(work_dir=work / "orthanc", stop_grace_s=1.0) as pacs:
        dest = Destination("pacs", pacs.aet, pacs.host, pacs.dicom_port, confirm="none",
                           max_associations=associations)
        settings = ExportSettings(poll_interval_s=0.05)
        exporter = Exporter(ExportLog(sessions), [dest], settings, data_dir=data,
                            calling_ae_title="CHESTCT")
        stop = threading.Event()
        started = time.perf_counter()
        thread = threading.Thread(target=exporter.run, args=(stop,), daemon=True)
        thread.start()
        total = objects + 2
        while True:
            with sessions() as session:
                done = _sent(session)
            if done >= total:
                break
            if time.perf_counter() - started > 600:
                raise TimeoutError("export did not finish in 600 s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join(timeout=30)
        stored = pacs.instance_count()
    if stored != total:
        raise RuntimeError(f"Orthanc holds {stored} objects, expected {total}")
    return total / elapsed


def storescu_run(work: Path, objects: int) -> float:
    """The reference: dcmtk storescu (C, one association) sending the same files."""
    _sessions, data = _queue_job(work, objects)
    with OrthancPeer(work_dir=work / "orthanc", stop_grace_s=1.0) as pacs:
        started = time.perf_counter()
        sent = storescu(data / "outbox", pacs.host, pacs.dicom_port, pacs.aet)
        elapsed = time.perf_counter() - started
        if sent.returncode != 0 or pacs.instance_count() != objects + 2:
            raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
    return (objects + 2) / elapsed


def _sent(session: Session) -> int:
    return int(session.scalar(
        select(func.count()).select_from(Export).where(Export.state == ExportState.SENT)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=130, help="overlay images per study")
    parser.add_argument("--associations", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    rows = []
    for n in (int(a) for a in args.associations.split(",")):
        rates = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
                rates.append(one_run(Path(tmp), args.objects, n))
        rows.append([str(n), f"{statistics.median(rates):.1f}", f"{min(rates):.1f}",
                     f"{max(rates):.1f}"])
    rates = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
            rates.append(storescu_run(Path(tmp), args.objects))
    rows.append(["dcmtk storescu, 1 (reference)", f"{statistics.median(rates):.1f}",
                 f"{min(rates):.1f}", f"{max(rates):.1f}"])
    print(machine_line())
    print(f"{args.objects} overlay images (512x512 RGB) + SEG + SR to Orthanc, "
          f"{args.repeats} runs each\n")
    print(format_table(["max_associations", "median objects/s", "min", "max"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
