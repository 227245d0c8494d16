"""SQLAlchemy 2.0 typed models: the node's whole state, one row per thing that happened.

Studies hold series, series hold instances; a job analyses one chosen series of a study; a job
produces result objects; each result object has one export row per destination. Events tell
each study's story in order. No patient names are stored: only UIDs, the accession number and
the modality metadata series selection needs.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dicomnode.contracts.states import ExportState, JobState, SeriesState

__all__ = ["ExportState", "JobState", "SeriesState"]  # defined with the contracts

UID_LEN = 64


def utcnow() -> datetime:
    """Naive UTC: every timestamp in the database is UTC without an offset (SQLite has none)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _enum_values(enum_cls: type[enum.Enum]) -> list[str]:
    """Store enum values ('queued'), not member names, so the tables read well in SQL."""
    return [str(member.value) for member in enum_cls]


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LEN), unique=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    first_received_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    # Set when the study's series were last evaluated; a newer instance makes it stale.
    evaluated_at: Mapped[datetime | None] = mapped_column(DateTime())

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LEN), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[SeriesState] = mapped_column(
        Enum(SeriesState, native_enum=False, length=16, values_callable=_enum_values),
        default=SeriesState.RECEIVING,
    )
    skip_reason: Mapped[str] = mapped_column(Text, default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One stored SOP instance and the header values series selection needs."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LEN), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LEN))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LEN))
    path: Mapped[str] = mapped_column(Text)  # relative to the data directory
    size_bytes: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer)
    image_type: Mapped[str] = mapped_column(String(128), default="")
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    # Geometry, as text "a\\b\\c" exactly as received (None when absent).
    image_position: Mapped[str | None] = mapped_column(String(96))
    image_orientation: Mapped[str | None] = mapped_column(String(160))
    pixel_spacing: Mapped[str | None] = mapped_column(String(64))
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    frame_of_reference_uid: Mapped[str] = mapped_column(String(UID_LEN), default="")
    body_part: Mapped[str] = mapped_column(String(32), default="")

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """The analysis of one series. ``fingerprint`` identifies its exact input and model set."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_lease", "state", "lease_expires_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    instance_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(
        Enum(JobState, native_enum=False, length=16, values_callable=_enum_values),
        default=JobState.QUEUED,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime())
    lease_owner: Mapped[str] = mapped_column(String(128), default="")
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime())
    # A failed attempt's retry waits until then (exponential backoff); None: claim at once.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime())
    # Fixed on first claim, reused on every retry: result UIDs derive from it.
    uid_root: Mapped[str] = mapped_column(String(UID_LEN), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    results: Mapped[list[ResultObject]] = relationship(back_populates="job")


class ResultObject(Base):
    __tablename__ = "result_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # SEG, SR, OVERLAY
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LEN))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LEN), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LEN))
    path: Mapped[str] = mapped_column(Text)  # relative to the data directory
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")
    exports: Mapped[list[Export]] = relationship(back_populates="result_object")


class Export(Base):
    __tablename__ = "exports"
    __table_args__ = (
        UniqueConstraint("result_object_id", "destination"),
        Index("ix_exports_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    result_object_id: Mapped[int] = mapped_column(ForeignKey("result_objects.id"))
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[ExportState] = mapped_column(
        Enum(ExportState, native_enum=False, length=16, values_callable=_enum_values),
        default=ExportState.PENDING,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None] = mapped_column(DateTime())
    committed_at: Mapped[datetime | None] = mapped_column(DateTime())
    # When the PACS is next asked whether it holds the object (sent: confirm; committed: verify).
    check_at: Mapped[datetime | None] = mapped_column(DateTime())
    confirm_attempts: Mapped[int] = mapped_column(Integer, default=0)

    result_object: Mapped[ResultObject] = relationship(back_populates="exports")


class Event(Base):
    """One line of a study's story: received, complete, series skipped, job ran, exported."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")


class WebUser(Base):
    """A person who signs in to the web app; ``role`` is radiologist, operator or admin.
    ``password_hash`` is an Argon2id hash (``dicomnode.db.users``), never the password."""

    __tablename__ = "web_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class WebSession(Base):
    """A signed-in browser: the cookie is a random secret, only its sha256 is stored. Ended
    (deleted) at logout; refused after ``expires_at``."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime())


class Verdict(Base):
    """A radiologist's verdict on one job's results: the classification (agree/disagree), each
    lesion (accept/reject), findings the AI missed. ``models`` holds the job's classifier (and
    shadow) name, version and answer as they were when the verdict was recorded."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    user_name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, index=True)
    classification: Mapped[str] = mapped_column(String(16))  # agree, disagree
    findings: Mapped[dict[str, Any]] = mapped_column(JSON)  # lesion number -> accept/reject
    missed_findings: Mapped[int] = mapped_column(Integer, default=0)
    comment: Mapped[str] = mapped_column(Text, default="")
    models: Mapped[dict[str, Any]] = mapped_column(JSON)
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(UID_LEN), default="")


class ActiveClassifier(Base):
    """Promotions: the newest row names the primary classifier (``NAME@VERSION`` of the model
    registry), overriding ``[pipeline] classifier`` when the worker starts."""

    __tablename__ = "active_classifier"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    promoted_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    promoted_by: Mapped[str] = mapped_column(String(64))
    forced: Mapped[bool] = mapped_column(default=False)
