"""Engine and session setup. Nothing connects at import time; the caller owns each session.

SQLite (the embedded default) gets WAL journaling, a busy timeout and foreign keys, with
``synchronous=NORMAL``: a commit survives a crash of the process (kill -9) without an fsync of
its own. After a power loss the newest commits may be missing, so at start-up the node
re-indexes every fsynced spool file that has no row (``dicomnode.receiving.recovery``): the
spool files are the durable record of what was acknowledged, the rows an index of them.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(conn: Connection) -> None:
    # Autocommit connections (the receiver's duplicate check) read without any transaction.
    if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite files get the pragmas above on every connection."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=8,
            max_overflow=16,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit BEGIN IMMEDIATE ourselves so
        # that writers queue on the busy timeout instead of failing on lock upgrades.
        event.listen(engine, "begin", _begin_immediate)

        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def open_database(url: str, *, migrate: bool = True) -> tuple[Engine, sessionmaker[Session]]:
    """Engine + session factory for ``url``, migrated to the newest schema unless told not to."""
    from dicomnode.db.migrate import upgrade  # alembic is only needed when migrating

    engine = make_engine(url)
    if migrate:
        upgrade(engine)
    return engine, make_sessionmaker(engine)
