"""`dicomnode serve`: receiver, assembler and exporter in this process; workers as children.

Workers are separate processes (``python -m dicomnode worker``) so the receiver never imports
torch and a crashed or killed worker is simply started again; its job is resumed once its
lease is released (dead local processes are detected at worker start) or expires.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicomnode.config import Settings
from dicomnode.db.confirmations import ConfirmationLog
from dicomnode.db.engine import open_database
from dicomnode.db.exports import ExportLog
from dicomnode.db.records import InstanceRecorder
from dicomnode.delivering.commitment import CommitmentTracker
from dicomnode.delivering.exporter import Exporter
from dicomnode.jobs.assembler import Assembler
from dicomnode.receiving.processes import CommitmentRelay, relay_path
from dicomnode.receiving.recovery import reindex_spool
from dicomnode.receiving.scp import preflight, start_receiver
from dicomnode.receiving.storage import Storage

log = logging.getLogger(__name__)

ASSEMBLER_MIN_INTERVAL_S = 0.2
WORKER_RESTART_DELAY_S = 1.0
WORKER_STOP_GRACE_S = 20.0
RECEIVERS_READY_S = 60.0


class WorkerSupervisor:
    """Keeps N worker (or receiver) processes running; restarts any that exit."""

    def __init__(
        self, count: int, config_path: Path | None, subcommand: str = "worker",
        extra_args: Sequence[str] = (),
    ) -> None:
        self._count = count
        self._config_path = config_path
        self._subcommand = subcommand
        self._extra = list(extra_args)
        self._procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "dicomnode", self._subcommand]
        if self._config_path is not None:
            cmd += ["--config", str(self._config_path)]
        cmd += [*self._extra, "--parent-pid", str(os.getpid())]  # it ends with this process
        proc = subprocess.Popen(cmd, env=os.environ.copy())
        log.info("started %s process %d", self._subcommand, proc.pid)
        return proc

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def alive(self) -> tuple[int, int]:
        """(worker processes running now, workers configured), for /healthz."""
        return sum(1 for p in list(self._procs) if p.poll() is None), self._count

    def run(self, stop: threading.Event) -> None:
        self._procs = [self._spawn() for _ in range(self._count)]
        while not stop.wait(0.5):
            for i, proc in enumerate(self._procs):
                code = proc.poll()
                if code is not None:
                    log.warning("%s process %d exited with %s; restarting", self._subcommand,
                                proc.pid, code)
                    time.sleep(WORKER_RESTART_DELAY_S)
                    self._procs[i] = self._spawn()
        for proc in self._procs:
            proc.terminate()
        deadline = time.monotonic() + WORKER_STOP_GRACE_S
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Node:
    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._web: Any = None
        self.supervisor = WorkerSupervisor(settings.node.workers, config_path)
        self._relay: CommitmentRelay | None = None
        self._receivers: threading.Thread | None = None

    def start(self) -> None:
        s = self.settings
        preflight(s.node)  # a busy port or unreadable certificate: one line, nothing created
        storage = Storage(
            s.node.data_dir,
            fsync=s.node.fsync,
            sync_directories=s.node.fsync_directories,
            min_free_mb=s.node.min_free_disk_mb,
        )
        storage.clean_tmp()
        _engine, sessions = open_database(s.database_url)
        recorder = InstanceRecorder(sessions)
        reindex_spool(storage, recorder)
        commitments = CommitmentTracker()
        shared_port = s.node.receiver_processes > 1
        self._server = start_receiver(s.node, storage, recorder,
                                      commitment_reports=commitments.on_event_report,
                                      reuse_port=shared_port)
        if shared_port:
            self._start_receiver_processes(storage, commitments)
        if s.web.enabled:
            from dicomnode.web.server import server_listening, start_web_server

            self._web = start_web_server(
                s, sessions, storage, receiver_alive=lambda: server_listening(self._server),
                workers_alive=self.supervisor.alive if s.node.workers > 0 else None,
            )
        assembler = Assembler(sessions, s)
        shortest = s.node.quiet_period_s
        if s.sources:  # idle studies from a source PACS are checked sooner
            shortest = min(shortest, s.node.expected_counts_after_s)
        interval = max(ASSEMBLER_MIN_INTERVAL_S, min(2.0, shortest / 4))
        exporter = Exporter(
            ExportLog(sessions), s.destinations, s.export,
            data_dir=storage.root, calling_ae_title=s.calling_ae_title,
            confirmations=ConfirmationLog(sessions), commitments=commitments,
        )
        self._threads = [
            threading.Thread(
                target=assembler.run, args=(self.stop_event, interval), name="assembler",
                daemon=True,
            ),
            threading.Thread(
                target=exporter.run, args=(self.stop_event,), name="exporter", daemon=True
            ),
        ]
        if s.node.workers > 0:
            self._threads.append(
                threading.Thread(
                    target=self.supervisor.run, args=(self.stop_event,), name="workers",
                    daemon=True,
                )
            )
        for thread in self._threads:
            thread.start()
        log.info(
            "node %s up: data %s, %d worker(s), %d destination(s)",
            s.node.ae_title, storage.root, s.node.workers, len(s.destinations),
        )

    def _start_receiver_processes(self, storage: Storage, commitments: CommitmentTracker) -> None:
        """``[node] receiver_processes`` - 1 more receivers on the same port (``dicomnode
        receive``), and the relay of the Storage Commitment reports they receive."""
        node = self.settings.node
        self._relay = CommitmentRelay(relay_path(storage.root), commitments.apply_report)
        receivers = WorkerSupervisor(
            node.receiver_processes - 1, self.config_path, subcommand="receive",
            extra_args=["--port", str(node.port), "--ae-title", node.ae_title,
                        "--data-dir", str(storage.root)],
        )
        self._receivers = threading.Thread(
            target=receivers.run, args=(self.stop_event,), name="receivers", daemon=True)
        self._receivers.start()
        # connections go to whichever process listens: wait until all of them do
        if not self._relay.wait_ready(node.receiver_processes - 1, RECEIVERS_READY_S):
            log.warning("not every receiver process was listening after %.0f s",
                        RECEIVERS_READY_S)

    def stop(self) -> None:
        if self._web is not None:
            self._web.stop()
        self.stop_event.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=WORKER_STOP_GRACE_S + 5)
        if self._receivers is not None:
            self._receivers.join(timeout=WORKER_STOP_GRACE_S + 5)
        if self._relay is not None:
            self._relay.close()
        log.info("node stopped")
