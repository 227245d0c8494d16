"""Database connections kept checked out between calls, for statements run per instance.

The receiver runs two or three short statements for every instance it stores. Taking a pooled
connection for each (pool checkout, reset on return, and for autocommit reads the isolation
level set and restored every time) cost more than the statements themselves; connections kept
here are reused as they are. A connection that raised is closed, not reused.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine


class HeldConnections:
    """Connections of one engine (with its execution options), reused across calls/threads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._engine.connect()
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        if conn.in_transaction():  # never hand on a connection with an open transaction
            conn.rollback()
        self._idle.put(conn)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
