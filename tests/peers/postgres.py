"""A real PostgreSQL 15 server for the tests: the Debian binaries run as a plain child process.

Usage (fixtures in ``tests/conftest.py``)::

    def test_something(postgres_url: str) -> None:      # a fresh, empty database per test
        engine = sqlalchemy.create_engine(postgres_url)  # "postgresql+psycopg://postgres@..."

    def test_other(postgres_server: PostgresServer) -> None:  # the session's server
        url = postgres_server.create_database()                # another fresh database
        url2 = postgres_server.create_database(template="node_template")

:class:`PostgresServer` runs ``initdb`` and ``postgres`` from ``/usr/lib/postgresql/15/bin``
(or ``$POSTGRES_BIN``) on a data directory in a new temporary folder, listening on a free
loopback TCP port and on a unix socket in the same folder, with durability switched off
(``fsync=off``: a test database never needs to survive a power loss). ``initdb`` refuses to
run as root, so as root both run as the ``postgres`` system user (the Debian package creates
it). Authentication is ``trust`` for the superuser ``postgres`` on loopback only. The server
gets SIGQUIT if the test process dies (``PR_SET_PDEATHSIG``), so a killed pytest leaves no
server behind; :meth:`PostgresServer.stop` shuts it down fast and removes the folder.

Database URLs are SQLAlchemy URLs for psycopg 3: ``postgresql+psycopg://postgres@127.0.0.1:
PORT/NAME``. :meth:`create_database` copies a template (``template1`` by default; any database
made once with :meth:`create_database` and filled, e.g. migrated, works as a template too) and
:meth:`drop_database` drops it even while connections remain (``WITH (FORCE)``).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.peers.ports import LOOPBACK_HOST, free_port
from tests.peers.processes import MissingPeerError, log_tail, stop_process

DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
SERVICE_USER = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
INSTALL_HINT = (
    "PostgreSQL 15 is not installed: run `sudo .ci/install-system.sh` "
    "(or `sudo apt-get install postgresql`)"
)
# Test settings: no durability, enough connections for several pooled engines per test.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "timezone": "UTC",
}
_PR_SET_PDEATHSIG = 1
_names = itertools.count(1)


def find_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``postgres``; raise :class:`MissingPeerError`."""
    bin_dir = Path(os.environ.get("POSTGRES_BIN", str(DEFAULT_BIN_DIR)))
    for tool in ("initdb", "postgres"):
        if not os.access(bin_dir / tool, os.X_OK):
            raise MissingPeerError(f"{bin_dir / tool} not found. {INSTALL_HINT}")
    return bin_dir


def _die_with_parent() -> None:
    """Run in the child before exec: SIGQUIT (immediate shutdown) when the test process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)


class PostgresError(RuntimeError):
    """The server did not start, or a statement against it failed."""


class PostgresServer:
    """One PostgreSQL server in a temporary folder; a context manager."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.port = 0
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_service_user = os.geteuid() == 0

    # ------------------------------------------------------------------ paths and URLs
    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of ``database`` over loopback TCP."""
        return f"postgresql+psycopg://{SUPERUSER}@{LOOPBACK_HOST}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """libpq connection string of ``database`` (for psycopg directly)."""
        return f"host={LOOPBACK_HOST} port={self.port} user={SUPERUSER} dbname={database}"

    # ------------------------------------------------------------------ life cycle
    def _run_kwargs(self) -> dict[str, object]:
        if not self._as_service_user:
            return {}
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError as exc:
            raise MissingPeerError(f"no '{SERVICE_USER}' system user. {INSTALL_HINT}") from exc
        return {"user": SERVICE_USER, "group": SERVICE_USER, "extra_groups": []}

    def _prepare_root(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
        self.socket_dir.mkdir()
        self.log_path.touch()
        if self._as_service_user:
            entry = pwd.getpwnam(SERVICE_USER)
            for path in (self.root, self.socket_dir, self.log_path):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        cmd = [
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ]
        kwargs = self._run_kwargs()
        done = subprocess.run(cmd, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace")[-2000:]
            raise PostgresError(f"initdb failed ({done.returncode}): {err}")

    def start(self) -> PostgresServer:
        """initdb a new cluster and start the server; return once it accepts connections."""
        self._prepare_root()
        self._initdb()
        self.port = free_port()
        cmd = [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
            "-p", str(self.port), "-h", LOOPBACK_HOST, "-k", str(self.socket_dir),
        ]
        for key, value in SERVER_SETTINGS.items():
            cmd += ["-c", f"{key}={value}"]
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(  # type: ignore[call-overload]
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, **self._run_kwargs(),
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PostgresError(
                    f"postgres exited with {self._proc.returncode}:\n{log_tail(self.log_path)}"
                )
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PostgresError(
                        f"postgres not ready after {START_TIMEOUT_S:.0f} s"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), kill after a grace period; remove the temporary folder."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, STOP_GRACE_S, signal.SIGINT)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ databases
    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement in autocommit mode (CREATE/DROP DATABASE need it)."""
        import psycopg

        try:
            with psycopg.connect(self.conninfo(database), autocommit=True) as conn:
                conn.execute(sql.encode())
        except psycopg.Error as exc:
            raise PostgresError(f"{sql!r} failed: {exc}") from exc

    def create_database(self, name: str | None = None, *, template: str = "template1") -> str:
        """Create database ``name`` (default: a new unique name) from ``template``; its URL."""
        name = name or f"t{os.getpid()}_{next(_names)}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any connection still open to it."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
