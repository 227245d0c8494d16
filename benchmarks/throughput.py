"""Throughput with N workers: studies/hour and scaling efficiency.

12 synthetic chest-CT phantoms (``training.synthetic``, 256x256, ~4 mm slices, COVID-19-like
lesions) are sent with dcmtk ``storescu`` to a ``dicomnode serve`` that has no workers of its
own (``[node] workers = 0``), so all 12 jobs are queued before any analysis starts. Then N
workers are started together and the benchmark waits until every job is done. The time is
taken from the database: first ``started_at`` to last ``finished_at``, so worker start-up
(imports, model loading) is not counted. Each row starts from a fresh node.

    .venv/bin/python -m benchmarks.throughput [--workers 1 2 4] [--studies 12] [--full]
        [--threads 1] [--postgres] [--kinds local]

``--full`` runs the default pipeline (U-Net lungs, DeCoVNet, lesion localisation); without it
the morphological lungs and no classifier, as the integration tests do. ``--threads`` is each
worker's torch thread count: with N workers on C cores, N x threads > C only adds contention.

Scaling efficiency = rate(N) / (N x rate(1)) of the same worker kind. On a machine with fewer
cores than workers it falls well below 1: that is the number to report, not a fault.

Worker kinds are pluggable: ``WORKER_KINDS`` maps a name to a function that starts N workers
for a running node and returns their processes. "local" starts ``dicomnode worker --config``
processes sharing the node's data directory; "remote" starts ``dicomnode worker --node-url
... --token ...`` processes (UPS-RS, WADO-RS, STOW-RS over the node's web app on loopback, each
in its own folder, no database); choose with ``--kinds local remote``. Other kinds register
with :func:`register_worker_kind`.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from benchmarks._common import REPO_ROOT, format_table, machine_line
from tests.integration.node_process import NodeProcess
from tests.peers.dcmtk import storescu
from tests.peers.ports import free_port

logger = logging.getLogger(__name__)

DEFAULT_STUDIES = 12
DEFAULT_WORKERS = (1, 2, 4)
PHANTOM_MATRIX = 256
PHANTOM_SLICE_MM = 4.0
QUEUE_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 3600.0
STOP_GRACE_S = 20.0

# A function that starts ``count`` workers for ``node`` (its own folder is ``work_dir``).
StartWorkers = Callable[[NodeProcess, int, Path], list[subprocess.Popen[bytes]]]
WORKER_KINDS: dict[str, StartWorkers] = {}


# Extra node settings a worker kind needs (the remote kind: the web app), made per row.
KIND_SECTIONS: dict[str, Callable[[], dict[str, dict[str, object]]]] = {}


def register_worker_kind(
    name: str, start: StartWorkers,
    sections: Callable[[], dict[str, dict[str, object]]] | None = None,
) -> None:
    """Make ``--kinds NAME`` available (e.g. remote workers over DICOMweb)."""
    WORKER_KINDS[name] = start
    if sections is not None:
        KIND_SECTIONS[name] = sections


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_local_workers(
    node: NodeProcess, count: int, work_dir: Path
) -> list[subprocess.Popen[bytes]]:
    """``count`` ``dicomnode worker`` processes on this host, sharing the node's data folder."""
    procs = []
    for i in range(count):
        log = open(work_dir / f"worker-{i}.log", "ab")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "worker", "--config", str(node.config_path)],
            cwd=REPO_ROOT, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT,
        ))
    return procs


register_worker_kind("local", start_local_workers)

REMOTE_TOKEN = "throughput-benchmark-token-0123456789"


def _remote_sections() -> dict[str, dict[str, object]]:
    return {"web": {"enabled": True, "host": "127.0.0.1", "port": free_port(), "auth": "token",
                    "token": REMOTE_TOKEN, "ohif_dir": "/nonexistent"}}


def start_remote_workers(
    node: NodeProcess, count: int, work_dir: Path
) -> list[subprocess.Popen[bytes]]:
    """``count`` ``dicomnode worker --node-url`` processes, each in its own empty folder:
    UPS-RS claims, WADO-RS retrieve and STOW-RS results over the node's web app (loopback).
    The node's file gives them only [pipeline] and [worker] (heartbeat_s)."""
    port = tomllib.loads(node.config_path.read_text())["web"]["port"]
    env = _clean_env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    procs = []
    for i in range(count):
        folder = work_dir / f"remote-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "worker.log", "ab")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "worker", "--config", str(node.config_path),
             "--node-url", f"http://127.0.0.1:{port}", "--token", REMOTE_TOKEN,
             "--work-dir", str(folder / "scratch")],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
        ))
    return procs


register_worker_kind("remote", start_remote_workers, _remote_sections)


@dataclass(frozen=True)
class Row:
    kind: str
    workers: int
    studies: int
    seconds: float
    failed: int

    @property
    def per_hour(self) -> float:
        return self.studies / self.seconds * 3600.0 if self.seconds > 0 else 0.0


def make_studies(count: int, out_dir: Path) -> list[Path]:
    """``count`` phantom studies, one folder each (deterministic seeds)."""
    from training.dicom_writer import write_series
    from training.synthetic.phantom import generate_case

    folders = []
    for seed in range(count):
        folder = out_dir / f"study-{seed:02d}"
        case = generate_case(seed, kind="covid", matrix=PHANTOM_MATRIX,
                             slice_spacing_mm=PHANTOM_SLICE_MM)
        write_series(case.hu, case.spacing_mm, folder, patient_id=f"PHANTOM{seed:04d}",
                     accession_number=f"TP{seed:04d}")
        folders.append(folder)
    return folders


def _pipeline_section(full: bool, threads: int) -> dict[str, object]:
    if full:
        return {"lung_segmentation": "unet", "classifier": "decovnet",
                "localize_lesions": True, "threads": threads, "overlay": True}
    return {"lung_segmentation": "morphological", "classifier": "none",
            "localize_lesions": False, "threads": threads}


def _as_datetime(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_row(kind: str, workers: int, studies: Sequence[Path], work_dir: Path, *,
            full: bool, threads: int, database_url: str) -> Row:
    """Queue every study on a fresh node, then let ``workers`` workers of ``kind`` drain it."""
    node_section: dict[str, object] = {"workers": 0, "quiet_period_s": 1.0}
    if database_url:
        node_section["database_url"] = database_url
    node = NodeProcess(work_dir / "node", sections={
        "node": node_section,
        "worker": {"lease_s": 600.0, "heartbeat_s": 5.0, "poll_interval_s": 0.2},
        "pipeline": _pipeline_section(full, threads),
        **(KIND_SECTIONS[kind]() if kind in KIND_SECTIONS else {}),
    })
    with node:
        for folder in studies:
            sent = storescu(folder, node.host, node.port, node.ae_title)
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed for {folder}: {sent.stderr[-500:]}")
        node.wait_for(lambda: len(node.query("select id from jobs")) >= len(studies),
                      QUEUE_TIMEOUT_S, f"{len(studies)} queued jobs")
        procs = WORKER_KINDS[kind](node, workers, work_dir)
        try:
            node.wait_for(
                lambda: not node.query(
                    "select id from jobs where state in ('queued', 'running')"),
                RUN_TIMEOUT_S, "every job finished",
            )
        finally:
            _stop(procs)
        rows = node.query("select started_at, finished_at, state from jobs")
    first = min(_as_datetime(r[0]) for r in rows)
    last = max(_as_datetime(r[1]) for r in rows)
    failed = sum(1 for r in rows if r[2] != "done")
    return Row(kind, workers, len(rows), (last - first).total_seconds(), failed)


def table(rows: Sequence[Row]) -> str:
    base = {r.kind: r.per_hour for r in rows if r.workers == 1}
    lines = []
    for r in rows:
        one = base.get(r.kind)
        efficiency = f"{r.per_hour / (r.workers * one):.2f}" if one else "-"
        lines.append([r.kind, str(r.workers), str(r.studies - r.failed), f"{r.seconds:.1f}",
                      f"{r.per_hour:.0f}", efficiency])
    return format_table(
        ["workers", "N", "studies done", "seconds", "studies/hour", "efficiency"], lines
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=list(DEFAULT_WORKERS))
    parser.add_argument("--studies", type=int, default=DEFAULT_STUDIES)
    parser.add_argument("--kinds", nargs="+", default=["local"],
                        help=f"worker kinds ({', '.join(WORKER_KINDS)})")
    parser.add_argument("--full", action="store_true", help="the default models (slow on CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--postgres", action="store_true",
                        help="the node on a PostgreSQL server started for the run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    unknown = set(args.kinds) - set(WORKER_KINDS)
    if unknown:
        parser.error(f"unknown worker kind(s) {sorted(unknown)}; known: {sorted(WORKER_KINDS)}")
    with tempfile.TemporaryDirectory(prefix="dicomnode-throughput-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        studies = make_studies(args.studies, root / "studies")
        logger.info("%d phantom studies written in %.0f s", len(studies),
                    time.perf_counter() - started)
        server = None
        if args.postgres:
            from tests.peers.postgres import PostgresServer

            server = PostgresServer().start()
        try:
            rows = []
            for kind in args.kinds:
                for n in args.workers:
                    url = server.create_database() if server is not None else ""
                    row = run_row(kind, n, studies, root / f"{kind}-{n}", full=args.full,
                                  threads=args.threads, database_url=url)
                    logger.info("%s x%d: %d studies in %.1f s", kind, n, row.studies,
                                row.seconds)
                    rows.append(row)
        finally:
            if server is not None:
                server.stop()
    pipeline = "full models" if args.full else "morphological lungs, no classifier"
    database = "PostgreSQL" if args.postgres else "SQLite"
    print(f"\n{machine_line()}\n{pipeline}, {args.threads} torch thread(s) per worker, "
          f"{database}, {args.studies} studies of {PHANTOM_MATRIX}x{PHANTOM_MATRIX} phantoms\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
