"""Run `dicomnode serve` as a real child process, as a hospital would, for integration tests."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.peers.ports import free_ports

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


class NodeProcess:
    """`dicomnode serve --config <generated toml>` on a free loopback port."""

    def __init__(
        self,
        work_dir: Path,
        *,
        destinations: Sequence[Mapping[str, Any]] = (),
        sources: Sequence[Mapping[str, Any]] = (),
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        ae_title: str = "CHESTCT",
    ) -> None:
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.host = "127.0.0.1"
        (self.port,) = free_ports(1)
        self.data_dir = work_dir / "data"
        self.config_path = work_dir / "node.toml"
        self.log_path = work_dir / "node.log"
        merged: dict[str, dict[str, Any]] = {
            "node": {
                "ae_title": ae_title, "host": self.host, "port": self.port,
                "data_dir": str(self.data_dir), "quiet_period_s": 1.0, "workers": 1,
                "min_free_disk_mb": 16, "log_level": "INFO",
            },
            "worker": {"lease_s": 6.0, "heartbeat_s": 1.0, "poll_interval_s": 0.2},
            "export": {"backoff_initial_s": 0.5, "backoff_max_s": 2.0, "max_attempts": 30,
                       "poll_interval_s": 0.2},
            "pipeline": {"lung_segmentation": "morphological", "classifier": "none",
                         "localize_lesions": False, "threads": 2},
        }
        for section, values in (sections or {}).items():
            merged.setdefault(section, {}).update(values)
        self.settings_sections = merged
        lines = []
        for section, values in merged.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        for table, entries in (("destinations", destinations), ("sources", sources)):
            for entry in entries:
                lines.append(f"[[{table}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
                lines.append("")
        self.config_path.write_text("\n".join(lines))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
        env["PYTHONUNBUFFERED"] = "1"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "serve", "--config", str(self.config_path)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited at start:\n{self.log_tail()}")
            if b"up: data" in self.log_path.read_bytes()[offset:]:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"node did not start:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_all()
        self.proc = None

    def kill_all(self) -> None:
        """kill -9 the node and its worker processes (one process group)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-f", f"dicomnode worker --config {self.config_path}"],
            capture_output=True, text=True,
        )
        return [int(p) for p in out.stdout.split()]

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    @property
    def database_url(self) -> str:
        return str(self.settings_sections.get("node", {}).get("database_url", ""))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read the node's job log directly, as an auditor would (SQLite file or PostgreSQL;
        ``?`` placeholders on both)."""
        if self.database_url:
            import psycopg

            conninfo = self.database_url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(conninfo) as pg:
                return list(pg.execute(sql.replace("?", "%s"), params).fetchall())
        con = sqlite3.connect(self.data_dir / "dicomnode.sqlite", timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def wait_for(self, predicate: Any, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node died while waiting for {what}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"{what} not within {timeout_s} s:\n{self.log_tail()}")

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
