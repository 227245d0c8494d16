"""Recording received instances and the study timeline (used by the receiver and assembler)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import ReturningInsert

from dicomnode.contracts import EventKind
from dicomnode.db.held_connections import HeldConnections
from dicomnode.db.models import Event, Instance, Job, JobState, Series, SeriesState, Study, utcnow


@dataclass(frozen=True)
class InstanceRecord:
    """Header values of one received instance (no patient-identifying values)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    path: str
    size_bytes: int
    calling_ae_title: str = ""
    accession_number: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None
    image_type: str = ""
    rows: int | None = None
    columns: int | None = None
    image_position: str | None = None
    image_orientation: str | None = None
    pixel_spacing: str | None = None
    slice_thickness: float | None = None
    frame_of_reference_uid: str = ""
    body_part: str = ""


def add_event(
    session: Session,
    study_id: int | None,
    kind: EventKind,
    message: str = "",
    job_id: int | None = None,
) -> None:
    session.add(Event(study_id=study_id, job_id=job_id, kind=kind.value, message=message))


@dataclass(frozen=True)
class StoredInstance:
    """What the database holds about an instance already received (for duplicate checks)."""

    study_id: int
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str


_INSTANCE_COLUMNS = frozenset(c.key for c in Instance.__table__.columns) - {"id"}
_RECORD_FIELDS = tuple(f.name for f in fields(InstanceRecord) if f.name in _INSTANCE_COLUMNS)


def _row_values(rec: InstanceRecord) -> dict[str, object]:
    """The instance table's columns from a record (``asdict`` deep-copies: ten times slower)."""
    return {name: getattr(rec, name) for name in _RECORD_FIELDS}


# Run for every received instance through the driver's own cursor: SQLAlchemy's statement and
# result set-up cost more CPU than this one index probe (py-spy, issue 9).
_STORED_INSTANCE_SQL = (
    "SELECT studies.id, studies.study_instance_uid, series.series_instance_uid,"
    " instances.sop_class_uid, instances.transfer_syntax_uid, instances.path"
    " FROM instances JOIN series ON instances.series_id = series.id"
    " JOIN studies ON series.study_id = studies.id"
    " WHERE instances.sop_instance_uid = {uid}"
)
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": ":1", "named": ":uid"}


# A duplicate SOP Instance UID (two associations racing) inserts nothing, on either engine;
# RETURNING tells whether a row went in (rowcount is -1 on PostgreSQL once RETURNING is used).
_INSERT_INSTANCE: dict[str, ReturningInsert[tuple[str]]] = {
    "sqlite": insert(Instance).prefix_with("OR IGNORE", dialect="sqlite")
    .returning(Instance.sop_instance_uid),
    "postgresql": postgresql.insert(Instance)
    .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    .returning(Instance.sop_instance_uid),
}
# The newest job of the study an already stored instance belongs to.
_NEWEST_JOB_OF_INSTANCE = (
    select(Job.state, Job.study_id)
    .join(Series, Series.study_id == Job.study_id)
    .join(Instance, Instance.series_id == Series.id)
    .where(Instance.sop_instance_uid == bindparam("uid"))
    .order_by(Job.id.desc())
    .limit(1)
)
_TOUCH_SERIES_BY = (
    update(Series)
    .where(Series.id == bindparam("sid"))
    .values(
        instance_count=Series.instance_count + bindparam("n"),
        last_received_at=bindparam("now"),
        state=SeriesState.RECEIVING,
    )
)
_TOUCH_STUDY = (
    update(Study).where(Study.id == bindparam("sid")).values(last_received_at=bindparam("now"))
)


@dataclass
class _Pending:
    """A row of a group commit, and what became of it."""

    rec: InstanceRecord
    done: bool = False
    inserted: bool = False
    error: Exception | None = None


class InstanceRecorder:
    """Commits one row per received instance; caches study/series ids across instances.

    Used from the receiver's association threads; each call uses its own session.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._engine: Engine = sessions.kw["bind"]
        # Reads outside any transaction: a plain SELECT must not take SQLite's write lock.
        self._reader = self._engine.execution_options(isolation_level="AUTOCOMMIT")
        self._reads = HeldConnections(self._reader)
        self._writes = HeldConnections(self._engine)
        self._series_ids: dict[str, tuple[int, int]] = {}  # series uid -> (study id, series id)
        self._commit_lock = threading.Lock()

    def stored(self, sop_instance_uid: str) -> StoredInstance | None:
        with self._reads.connection() as conn:
            style = conn.dialect.paramstyle
            params: Any = {"uid": sop_instance_uid} if style == "named" else (sop_instance_uid,)
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(_STORED_INSTANCE_SQL.format(uid=_PLACEHOLDERS[style]), params)
                row = cursor.fetchone()
            finally:
                cursor.close()
        return None if row is None else StoredInstance(*row)

    def record_conflict(self, study_id: int, message: str) -> None:
        """One 'instance-conflict' line in the study's event log (UIDs and AE titles only)."""
        with self._sessions() as session, session.begin():
            add_event(session, study_id, EventKind.INSTANCE_CONFLICT, message)

    def resent(self, sop_instance_uid: str) -> bool:
        """An instance already stored arrived again. If its study's newest job failed for
        good, mark the study as received now: after the quiet period the assembler queues the
        job again (a re-send after a fault is how a modality asks for another try). True then.
        Otherwise nothing is written: a duplicate of a study that went well changes nothing.
        """
        with self._reader.connect() as conn:
            newest = conn.execute(_NEWEST_JOB_OF_INSTANCE, {"uid": sop_instance_uid}).first()
        if newest is None or newest.state != JobState.FAILED:
            return False
        with self._sessions() as session, session.begin():
            session.execute(_TOUCH_STUDY, {"sid": newest.study_id, "now": utcnow()})
        return True

    def known_paths(self) -> set[str]:
        with self._sessions() as session:
            return set(session.scalars(select(Instance.path)))

    def record(self, rec: InstanceRecord) -> bool:
        """Insert the instance row and update its series/study; False if it was already there.
        Returns once the row is committed (start-up re-index, tools; the receiver hands its
        rows to ``dicomnode.db.row_writer`` instead)."""
        [item] = self._commit_group([rec])
        if item.error is not None:
            raise item.error
        return item.inserted

    def record_group(self, recs: list[InstanceRecord]) -> list[Exception | None]:
        """Commit several rows together (one transaction when possible); per row, the error
        that kept it out of the database, or None once it is committed (or was already)."""
        return [p.error for p in self._commit_group(recs)]

    def _commit_group(self, recs: list[InstanceRecord]) -> list[_Pending]:
        batch = [_Pending(rec) for rec in recs]
        with self._commit_lock:
            self._commit(batch)
        return batch

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            results = self._record_batch([p.rec for p in batch]) if len(batch) > 1 else None
        except SQLAlchemyError:
            results = None  # e.g. a unique-constraint race: each row on its own, with retries
        for index, pending in enumerate(batch):
            try:
                pending.inserted = (
                    results[index] if results is not None else self._record_with_retry(pending.rec)
                )
            except Exception as exc:  # handed to the caller that owns the row
                pending.error = exc
            pending.done = True

    def _record_with_retry(self, rec: InstanceRecord) -> bool:
        """One row in its own transaction. A concurrent writer creating the same study or
        series first (possible on PostgreSQL) makes this retry on the unique constraint."""
        for attempt in range(3):
            try:
                return self._record_once(rec)
            except IntegrityError:
                self._series_ids.pop(rec.series_instance_uid, None)
                if attempt == 2:
                    raise
        return False

    def _record_batch(self, recs: list[InstanceRecord]) -> list[bool]:
        """Several rows in one transaction; series and studies touched once each."""
        now = utcnow()
        new_ids: dict[str, tuple[int, int]] = {}
        if all(r.series_instance_uid in self._series_ids for r in recs):
            # the usual case: known series, a held connection, no session
            with self._writes.connection() as conn, conn.begin():
                results = self._insert_rows(conn, recs, now, new_ids)
            return results
        with self._sessions() as session, session.begin():
            results = self._insert_rows(session.connection(), recs, now, new_ids, session)
        self._series_ids.update(new_ids)
        return results

    def _insert_rows(
        self, conn: Connection, recs: list[InstanceRecord], now: datetime,
        new_ids: dict[str, tuple[int, int]], session: Session | None = None,
    ) -> list[bool]:
        insert_row = _INSERT_INSTANCE.get(conn.dialect.name, _INSERT_INSTANCE["sqlite"])
        ids_of: list[tuple[int, int]] = []
        rows: dict[str, dict[str, object]] = {}  # one insert per UID, in arrival order
        for rec in recs:
            ids = new_ids.get(rec.series_instance_uid) or self._series_ids.get(
                rec.series_instance_uid)
            if ids is None:
                if session is None:
                    raise RuntimeError("a new series needs a session to be created")
                ids = self._ids(session, rec, now)
            new_ids[rec.series_instance_uid] = ids
            ids_of.append(ids)
            rows.setdefault(rec.sop_instance_uid,
                            {"series_id": ids[1], "received_at": now, **_row_values(rec)})
        # one statement for the whole group; RETURNING names the rows that went in
        inserted = {uid for (uid,) in conn.execute(insert_row, list(rows.values()))}
        results: list[bool] = []
        series_added: Counter[int] = Counter()
        studies: set[int] = set()
        for rec, (study_id, series_id) in zip(recs, ids_of, strict=True):
            went_in = rec.sop_instance_uid in inserted
            inserted.discard(rec.sop_instance_uid)  # a second copy in the group did not
            results.append(went_in)
            if went_in:
                series_added[series_id] += 1
                studies.add(study_id)
        for series_id, count in series_added.items():
            conn.execute(_TOUCH_SERIES_BY, {"sid": series_id, "now": now, "n": count})
        for study_id in studies:
            conn.execute(_TOUCH_STUDY, {"sid": study_id, "now": now})
        return results

    def _record_once(self, rec: InstanceRecord) -> bool:
        """One row in its own short transaction (the batch path with one row)."""
        return self._record_batch([rec])[0]

    def _ids(self, session: Session, rec: InstanceRecord, now: datetime) -> tuple[int, int]:
        cached = self._series_ids.get(rec.series_instance_uid)
        if cached is not None:
            return cached
        study = session.scalar(
            select(Study).where(Study.study_instance_uid == rec.study_instance_uid)
        )
        if study is None:
            study = Study(
                study_instance_uid=rec.study_instance_uid,
                accession_number=rec.accession_number[:64],
                first_received_at=now,
                last_received_at=now,
            )
            session.add(study)
            session.flush()
            add_event(session, study.id, EventKind.STUDY_RECEIVED, f"from {rec.calling_ae_title}")
        series = session.scalar(
            select(Series).where(Series.series_instance_uid == rec.series_instance_uid)
        )
        if series is None:
            series = Series(
                study_id=study.id,
                series_instance_uid=rec.series_instance_uid,
                modality=rec.modality[:16],
                series_number=rec.series_number,
                description=rec.series_description[:128],
                last_received_at=now,
            )
            session.add(series)
            session.flush()
            add_event(
                session,
                study.id,
                EventKind.SERIES_RECEIVED,
                f"series {rec.series_instance_uid} ({rec.modality or 'no modality'})",
            )
        return study.id, series.id
