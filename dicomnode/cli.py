"""The ``dicomnode`` command: serve, worker, status, analyze, send, echo, retry-export, requeue,
users, models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicomnode import __version__
from dicomnode.config import Settings, load_settings
from dicomnode.errors import DicomNodeError
from dicomnode.remote.command import add_arguments as add_remote_arguments

log = logging.getLogger("dicomnode")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    # pynetdicom narrates every PDU at INFO; keep its warnings and errors only.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.root.level))
    # alembic tells each migration step and highdicom each object it builds at INFO: shown
    # only when the node runs at DEBUG.
    if logging.root.level > logging.DEBUG:
        for name in ("alembic", "highdicom"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("port", "ae_title", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[f"node.{name}"] = value
    return load_settings(args.config, overrides)


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        log.info("signal %d received; stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode.node import Node

    settings = _settings(args)
    _setup_logging(settings.node.log_level)
    stop = _wait_for_signal()
    node = Node(settings, args.config)
    node.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
    return 0


def _child_start(args: argparse.Namespace) -> tuple[Settings, threading.Event]:
    """Settings, logging, the parent watch (``--parent-pid``) and the stop signal of a process
    the node starts (a worker or a receiver)."""
    settings = _settings(args)
    _setup_logging(settings.node.log_level)
    if args.parent_pid is not None:
        from dicomnode.jobs.parentwatch import exit_with_parent

        exit_with_parent(args.parent_pid)
    return settings, _wait_for_signal()


def cmd_receive(args: argparse.Namespace) -> int:
    """One extra receiver process of ``serve`` (``[node] receiver_processes``)."""
    from dicomnode.db.engine import open_database
    from dicomnode.db.records import InstanceRecorder
    from dicomnode.receiving.processes import announce_ready, relay_handler, relay_path
    from dicomnode.receiving.scp import start_receiver
    from dicomnode.receiving.storage import Storage

    settings, stop = _child_start(args)
    node = settings.node
    storage = Storage(node.data_dir, fsync=node.fsync, sync_directories=node.fsync_directories,
                      min_free_mb=node.min_free_disk_mb)
    _engine, sessions = open_database(settings.database_url, migrate=False)
    server = start_receiver(node, storage, InstanceRecorder(sessions),
                            commitment_reports=relay_handler(relay_path(storage.root)),
                            reuse_port=True)
    announce_ready(relay_path(storage.root))
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()  # commits the rows still queued
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from dicomnode.config import pipeline_options
    from dicomnode.db.engine import open_database
    from dicomnode.jobs.processing import load_processor
    from dicomnode.jobs.worker import Worker
    from dicomnode.receiving.storage import Storage
    from dicomnode.remote import command as remote

    settings, stop = _child_start(args)
    if remote.wants_remote(args):
        return remote.run_remote_worker(args, settings, stop)
    storage = Storage(settings.node.data_dir, fsync=settings.node.fsync)
    _engine, sessions = open_database(settings.database_url)
    from dicomnode.review.promotion import active_classifier

    options = pipeline_options(settings)
    options["primary_classifier"] = active_classifier(sessions) or ""  # promoted (models promote)
    processor = load_processor(settings.pipeline.processor, options)
    worker = Worker(settings, sessions, storage, processor)
    if args.once:
        worker.recover()
        worker.run_once()
        return 0
    worker.run(stop)
    return 0


def _fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _plain(value: Any) -> Any:
    """Dataclass views as JSON-ready dicts (datetimes become strings via ``default=str``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _print_study(session: Any, study_uid: str, as_json: bool) -> int:
    from dicomnode.db.queries.studies import study_detail
    from dicomnode.web.timeline import fold_events

    detail = study_detail(session, study_uid)
    if detail is None:
        print(f"no study {study_uid}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(_plain(detail), default=str, indent=2))
        return 0
    print(f"Study {study_uid}: {detail.study.status}")
    for s in detail.series:
        print(f"  series {s.series_instance_uid} ({s.modality}, {s.instance_count} instances): "
              f"{s.state}{': ' + s.reason if s.reason else ''}")
    # Runs of like events (one "exported" per object) fold into one line, as on the study page.
    for entry in fold_events(list(detail.events)):
        job = f" job {entry.job_id}" if entry.job_id else ""
        count = f" x{len(entry.events)}" if entry.folded else ""
        print(f"{_fmt_time(entry.first_at)}  {entry.kind:<16}{job}{count}  {entry.message}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dicomnode.db.engine import open_database
    from dicomnode.db.queries.counts import totals
    from dicomnode.db.queries.exports import failed_export_groups
    from dicomnode.db.queries.jobs import list_jobs
    from dicomnode.db.queries.studies import list_studies

    settings = _settings(args)
    _setup_logging("WARNING")
    _engine, sessions = open_database(settings.database_url)
    with sessions() as session:
        if args.study:
            return _print_study(session, args.study, args.json)
        counts = totals(session)
        studies = list_studies(session, limit=args.limit)
        jobs = list_jobs(session, limit=args.limit)
        failed = failed_export_groups(session, limit=args.limit)
    if args.json:
        print(json.dumps(
            {
                "counts": counts,
                "studies": [_plain(s) for s in studies],
                "jobs": [_plain(j) for j in jobs],
                "failed_exports": [_plain(f) for f in failed],
            },
            default=str, indent=2,
        ))
        return 0
    def nonzero(by_state: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in by_state.items() if v) or "none"

    print(f"Totals: studies {counts['studies']}, series {counts['series']}, instances "
          f"{counts['instances']}; jobs {nonzero(counts['jobs'])}; exports "
          f"{nonzero(counts['exports'])}")
    print(f"\nStudies ({len(studies)} most recent)")
    print(f"{'study instance uid':<64}  {'series':>6} {'inst':>5}  {'status':<9}  last received")
    for st in studies:
        skipped = f" ({st.skipped_series} skipped)" if st.skipped_series else ""
        print(f"{st.study_instance_uid:<64}  {st.series_count:>6} {st.instance_count:>5}  "
              f"{st.status:<9}  {_fmt_time(st.last_received_at)}{skipped}")
    print(f"\nJobs ({len(jobs)} most recent)")
    print(f"{'id':>5}  {'state':<8} {'tries':>5}  {'exports committed/sent/pending/failed':<38} "
          "series")
    for j in jobs:
        states = Counter(e.state for r in j.results for e in r.exports)
        exports = (f"{states['committed']}/{states['sent']}/"
                   f"{states['pending'] + states['sending']}/{states['failed']}")
        if states["refused"]:
            exports += f" ({states['refused']} refused)"
        print(f"{j.job_id:>5}  {j.state:<8} {j.attempts:>5}  {exports:<38} {j.series_instance_uid}")
        if j.error:
            print(f"       error: {j.error.splitlines()[0][:160]}")
    print(f"\nFailed exports ({sum(f.count for f in failed)})")
    for f in failed:
        kinds = ", ".join(f"{kind} {n}" for kind, n in f.kinds)
        print(f"  job {f.job_id} to {f.destination}: {f.count} ({kinds}), up to {f.max_attempts} "
              f"attempts, {f.last_error[:120]}  (retry: dicomnode retry-export --job {f.job_id} "
              f"--destination {f.destination})")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from dicomnode.tools.analyze import analyze_directory

    settings = _settings(args)
    overrides = {}
    if args.classifier:
        overrides["pipeline.classifier"] = args.classifier
    if args.lungs:
        overrides["pipeline.lung_segmentation"] = args.lungs
    if overrides:
        settings = load_settings(args.config, overrides)
    _setup_logging(settings.node.log_level)
    summary = analyze_directory(args.input_dir, args.out, settings)
    by_kind: dict[str, list[str]] = {}
    for obj in summary["objects"]:
        by_kind.setdefault(obj["kind"], []).append(obj["path"])
    for kind, paths in by_kind.items():
        shown = paths[0] if len(paths) == 1 else f"{len(paths)} files in {Path(paths[0]).parent}"
        print(f"{kind:<8} {shown}")
    print(f"summary  {args.out / 'summary.json'}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from dicomnode.tools.send import send_files

    _setup_logging("INFO" if args.verbose else "WARNING")
    if not args.verbose:  # network failures are summarised below, not shown as tracebacks
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    report = send_files(args.paths, args.host, args.port, args.aet, args.calling_aet,
                        fix_uids=args.fix_uids)
    print(f"sent {report.sent}, failed {report.failed}, not DICOM {report.not_dicom}")
    for code, n in sorted(report.statuses.items()):
        print(f"  refused with 0x{code:04X}: {n} ({report.comments.get(code) or 'no comment'})")
    if report.no_response:
        print(f"  no response: {report.no_response}")
    if report.not_sendable:
        print(f"  not sendable as they are: {report.not_sendable}"
              + ("" if args.fix_uids else " (try --fix-uids)"))
    if report.stopped:
        print(f"  stopped: {report.stopped}")
    if not args.fix_uids and (report.statuses[0xC220] or report.statuses[0xC221]):
        print("  malformed UIDs: --fix-uids sends repaired copies (files are not changed)")
    return 0 if report.failed == 0 else 1


def cmd_echo(args: argparse.Namespace) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=args.calling_aet)
    ae.add_requested_context(Verification)
    assoc = ae.associate(args.host, args.port, ae_title=args.aet)
    if not assoc.is_established:
        print("association failed")
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    code = int(getattr(status, "Status", -1))
    print(f"C-ECHO status 0x{code:04X}")
    return 0 if code == 0 else 1


def cmd_retry_export(args: argparse.Namespace) -> int:
    from dicomnode.db.engine import open_database
    from dicomnode.db.exports import ExportLog

    settings = _settings(args)
    if not args.export_ids and args.job is None:
        raise SystemExit("name export ids, or --job (with --destination)")
    if args.job is not None and not args.destination:
        raise SystemExit("--job needs --destination")
    _engine, sessions = open_database(settings.database_url)
    log = ExportLog(sessions)
    from dicomnode.review.cli import audit_cli_action

    for export_id in args.export_ids:
        log.retry(export_id)
        audit_cli_action(sessions, "export-retry", f"export {export_id} sent again",
                         export_id=export_id)
        print(f"export {export_id} queued again")
    if args.job is not None:
        count = log.retry_failed(args.job, args.destination)
        audit_cli_action(sessions, "export-retry", f"{count} failed export(s) of job "
                         f"{args.job} to {args.destination} sent again", job_id=args.job)
        print(f"{count} failed export(s) of job {args.job} to {args.destination} queued again")
        if count == 0:
            return 1
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    from dicomnode.db.engine import open_database
    from dicomnode.db.queue import JobQueue

    settings = _settings(args)
    _engine, sessions = open_database(settings.database_url)
    queue = JobQueue.configured(sessions, settings.worker)
    from dicomnode.review.cli import audit_cli_action

    refused = 0
    for job_id in args.job_ids:
        try:
            queued = queue.requeue(job_id)
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            refused += 1
            continue
        if queued:
            audit_cli_action(sessions, "job-requeue", f"job {job_id} queued again", job_id=job_id)
            print(f"job {job_id} queued again")
        else:
            print(f"error: job {job_id} is running; not queued again", file=sys.stderr)
            refused += 1
    return 1 if refused else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomnode", description="Chest-CT DICOM node: receive, analyse, return results."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=None,
                       help="TOML settings file (default: embedded defaults + environment)")
        return p

    p = with_config(sub.add_parser("serve", help="run the node: receiver, workers, exporter"))
    p.add_argument("--port", type=int, help="override [node] port")
    p.add_argument("--ae-title", dest="ae_title", help="override [node] ae_title")
    p.add_argument("--data-dir", dest="data_dir", type=Path, help="override [node] data_dir")
    p.set_defaults(func=cmd_serve)

    p = with_config(sub.add_parser("receive", help="one extra receiver process (run by serve)"))
    p.add_argument("--port", type=int, help="override [node] port")
    p.add_argument("--ae-title", dest="ae_title", help="override [node] ae_title")
    p.add_argument("--data-dir", dest="data_dir", type=Path, help="override [node] data_dir")
    p.add_argument("--parent-pid", dest="parent_pid", type=int, default=None,
                   help="exit as soon as this process (the node) is gone")
    p.set_defaults(func=cmd_receive)

    p = with_config(sub.add_parser("worker", help="run one worker process"))
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--parent-pid", dest="parent_pid", type=int, default=None,
                   help="exit as soon as this process (the supervisor) is gone")
    add_remote_arguments(p)
    p.set_defaults(func=cmd_worker)

    p = with_config(sub.add_parser("status", help="studies, jobs, exports and failures"))
    p.add_argument("--study", help="print the timeline of one study instance UID")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("analyze", help="offline run on a folder of DICOM files"))
    p.add_argument("input_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classifier", choices=["decovnet", "cnn-bert", "none"])
    p.add_argument("--lungs", choices=["unet", "morphological"])
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("send", help="C-STORE files or folders to a DICOM peer")
    p.add_argument("paths", type=Path, nargs="+")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11112)
    p.add_argument("--aet", default="CHESTCT", help="called AE title")
    p.add_argument("--calling-aet", default="DICOMNODE-SCU")
    p.add_argument("--fix-uids", action="store_true",
                   help="replace missing or malformed UIDs with deterministic valid ones before "
                        "sending (files on disk are not changed)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11112)
    p.add_argument("--aet", default="CHESTCT")
    p.add_argument("--calling-aet", default="DICOMNODE-SCU")
    p.set_defaults(func=cmd_echo)

    p = with_config(sub.add_parser("retry-export", help="send failed exports again"))
    p.add_argument("export_ids", type=int, nargs="*")
    p.add_argument("--job", type=int, help="every failed export of this job (with --destination)")
    p.add_argument("--destination", help="destination name (with --job)")
    p.set_defaults(func=cmd_retry_export)

    p = with_config(sub.add_parser("requeue", help="run jobs again (same result UIDs)"))
    p.add_argument("job_ids", type=int, nargs="+")
    p.set_defaults(func=cmd_requeue)

    from dicomnode.review.cli import add_commands

    add_commands(sub, with_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DicomNodeError as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return 2
