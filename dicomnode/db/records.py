"""Recording received instances and the study timeline (used by the receiver and assembler)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import Event, Instance, Series, SeriesState, Study, utcnow


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
    session: Session, study_id: int | None, kind: str, message: str = "", job_id: int | None = None
) -> None:
    session.add(Event(study_id=study_id, job_id=job_id, kind=kind, message=message))


class InstanceRecorder:
    """Commits one row per received instance; caches study/series ids across instances.

    Used from the receiver's association threads; each call uses its own session.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._series_ids: dict[str, tuple[int, int]] = {}  # series uid -> (study id, series id)

    def exists(self, sop_instance_uid: str) -> bool:
        with self._sessions() as session:
            found = session.scalar(
                select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)
            )
            return found is not None

    def known_paths(self) -> set[str]:
        with self._sessions() as session:
            return set(session.scalars(select(Instance.path)))

    def record(self, rec: InstanceRecord) -> bool:
        """Insert the instance row and update its series/study; False if it was already there.

        A concurrent association creating the same study or series first (possible on
        PostgreSQL; SQLite serialises writers) makes this retry once on the unique constraint.
        """
        for attempt in range(3):
            try:
                return self._record_once(rec)
            except IntegrityError:
                self._series_ids.pop(rec.series_instance_uid, None)
                if attempt == 2:
                    raise
        return False

    def _record_once(self, rec: InstanceRecord) -> bool:
        now = utcnow()
        with self._sessions() as session:
            with session.begin():
                study_id, series_id = self._ids(session, rec, now)
                if session.scalar(
                    select(Instance.id).where(Instance.sop_instance_uid == rec.sop_instance_uid)
                ):
                    return False
                session.add(
                    Instance(
                        series_id=series_id,
                        sop_instance_uid=rec.sop_instance_uid,
                        sop_class_uid=rec.sop_class_uid,
                        transfer_syntax_uid=rec.transfer_syntax_uid,
                        path=rec.path,
                        size_bytes=rec.size_bytes,
                        received_at=now,
                        calling_ae_title=rec.calling_ae_title,
                        instance_number=rec.instance_number,
                        image_type=rec.image_type,
                        rows=rec.rows,
                        columns=rec.columns,
                        image_position=rec.image_position,
                        image_orientation=rec.image_orientation,
                        pixel_spacing=rec.pixel_spacing,
                        slice_thickness=rec.slice_thickness,
                        frame_of_reference_uid=rec.frame_of_reference_uid,
                        body_part=rec.body_part,
                    )
                )
                session.execute(
                    update(Series)
                    .where(Series.id == series_id)
                    .values(
                        instance_count=Series.instance_count + 1,
                        last_received_at=now,
                        state=SeriesState.RECEIVING,
                    )
                )
                session.execute(
                    update(Study).where(Study.id == study_id).values(last_received_at=now)
                )
        self._series_ids[rec.series_instance_uid] = (study_id, series_id)
        return True

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
            add_event(session, study.id, "study-received", f"from {rec.calling_ae_title}")
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
                "series-received",
                f"series {rec.series_instance_uid} ({rec.modality or 'no modality'})",
            )
        return study.id, series.id
