"""Fixtures for the node's own tests: small synthetic CT instances, a database, a receiver.

The database: ``settings`` uses the ``database_url`` fixture, which follows ``db_backend``
("sqlite" unless a module asks for more). A DB-facing module runs every test on both engines
with ``pytestmark = both_backends``: the embedded SQLite file and a real PostgreSQL 15 server
(``tests/peers/postgres.py``), where each test gets its own database copied from a template
that the migrations built once per session.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import NodeSettings, Settings, load_settings
from dicomnode.db.engine import open_database
from dicomnode.db.records import InstanceRecorder
from dicomnode.receiving.scp import start_receiver
from dicomnode.receiving.storage import Storage
from tests.peers.ports import free_port
from tests.peers.postgres import PostgresServer

__all__ = ["free_port"]  # imported from here by the node's tests

BACKENDS = ("sqlite", "postgresql")
PG_TEMPLATE = "node_template"
# Every test of a module marked with this runs once per database engine.
both_backends = pytest.mark.parametrize("db_backend", BACKENDS, indirect=True)


def det_uid(*parts: str) -> str:
    """A deterministic UID in the 2.25 (UUID) root from ``parts``."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_OID, "|".join(parts)).int)


def ct_dataset(
    study_uid: str,
    series_uid: str,
    index: int,
    *,
    spacing_mm: float = 2.0,
    size: int = 16,
    description: str = "CHEST",
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    sop_uid: str | None = None,
) -> Dataset:
    """A tiny but complete CT Image Storage instance at slice ``index`` of an axial series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or det_uid(series_uid, str(index))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = det_uid(study_uid, "for")
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN-001"
    ds.Modality = "CT"
    ds.SeriesDescription = description
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImageType = image_type.split("\\")
    ds.ImagePositionPatient = [-100.0, -100.0, -index * spacing_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = spacing_mm
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    rng = np.random.default_rng(index)
    ds.PixelData = rng.integers(0, 1500, (size, size), dtype=np.int16).tobytes()
    return ds


def wait_for_instances(
    sessions: sessionmaker[Session], count: int, timeout_s: float = 10.0
) -> None:
    """Wait until ``count`` instance rows are committed: the receiver acknowledges an instance
    once its file is synced, and its row follows in the row writer's next group commit."""
    import time

    from sqlalchemy import func, select

    from dicomnode.db.models import Instance

    deadline = time.monotonic() + timeout_s
    while True:
        with sessions() as session:
            found = session.scalar(select(func.count()).select_from(Instance)) or 0
        if found >= count or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def ct_series(n: int, **kwargs: object) -> list[Dataset]:
    study = generate_uid(prefix=None)
    series = generate_uid(prefix=None)
    return [ct_dataset(study, series, i, **kwargs) for i in range(n)]  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def db_backend(request: pytest.FixtureRequest) -> str:
    """"sqlite" (the default) or "postgresql" when the module is marked ``both_backends``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def pg_template(postgres_server: PostgresServer) -> str:
    """A database the migrations brought to the newest schema once: the per-test template."""
    url = postgres_server.create_database(PG_TEMPLATE)
    engine, _ = open_database(url)
    engine.dispose()
    return PG_TEMPLATE


def new_database(request: pytest.FixtureRequest, backend: str) -> tuple[str, Callable[[], None]]:
    """A fresh database for ``backend``: its URL ("" = the node's SQLite file) and a drop."""
    if backend == "sqlite":
        return "", lambda: None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database(template=request.getfixturevalue("pg_template"))
    return url, lambda: server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture()
def database_url(request: pytest.FixtureRequest, db_backend: str) -> Iterator[str]:
    """The test's own database: "" (SQLite in the data directory) or a PostgreSQL URL."""
    url, drop = new_database(request, db_backend)
    yield url
    drop()


@pytest.fixture()
def settings(tmp_path: Path, database_url: str) -> Settings:
    base = load_settings(None)
    node = replace(
        base.node,
        host="127.0.0.1",
        port=free_port(),
        data_dir=tmp_path / "data",
        quiet_period_s=0.5,
        min_free_disk_mb=1,
        database_url=database_url,
    )
    return replace(base, node=node)


@pytest.fixture()
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    settings.node.data_dir.mkdir(parents=True, exist_ok=True)
    engine, factory = open_database(settings.database_url)
    yield factory
    engine.dispose()


@pytest.fixture()
def storage(settings: Settings) -> Storage:
    return Storage(settings.node.data_dir, fsync=True, min_free_mb=settings.node.min_free_disk_mb)


@pytest.fixture()
def receiver(
    settings: Settings, storage: Storage, sessions: sessionmaker[Session]
) -> Iterator[NodeSettings]:
    server = start_receiver(settings.node, storage, InstanceRecorder(sessions))
    yield settings.node
    server.shutdown()


@pytest.fixture()
def queued_job(settings: Settings, sessions: sessionmaker[Session]) -> int:
    """One 45-slice series recorded and evaluated: a queued job's id."""
    from dicomnode.jobs.assembler import Assembler

    from .test_assembler_and_queue import later, record_series

    record_series(InstanceRecorder(sessions), "1.2.826.0.1.1", "1.2.826.0.1.1.2", 45)
    (job_id,) = Assembler(sessions, settings).evaluate_due(later())
    return job_id
