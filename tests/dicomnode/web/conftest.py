"""A node with real files and rows, built the way the node builds them, for the web app's tests.

Study A: an 8-slice chest CT (uncompressed) and a 2-slice topogram (RLE Lossless), evaluated
by the real assembler (the topogram is skipped, a job queued), run by the real worker with a
small processor that writes a highdicom SEG and an SR; its exports: one sent, one failed for
good, one pending. Study B: 6 RLE-compressed CT slices of another patient, still receiving.
Received files go through ``Storage.write_atomic`` and ``InstanceRecorder`` as in the C-STORE
handler.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless, generate_uid
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Destination, Settings, WebSettings, load_settings
from dicomnode.contracts import ProcessOutcome, ProcessRequest, ResultFile, ResultKind
from dicomnode.db.engine import open_database
from dicomnode.db.exports import ExportLog
from dicomnode.db.models import Export, ResultObject, utcnow
from dicomnode.db.records import InstanceRecorder
from dicomnode.jobs.assembler import Assembler
from dicomnode.jobs.worker import Worker
from dicomnode.receiving.headers import instance_record
from dicomnode.receiving.storage import Storage
from dicomnode.web.app import create_app
from tests.dicomnode.conftest import ct_dataset, free_port, new_database

TOKEN = "test-token-0123456789abcdef"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
STAGE_TIMINGS_S = {"read": 0.4, "lungs": 1.5, "classify": 0.25, "write": 0.1}
HIDDEN_NAME = "Test^Synthetic"  # PatientName of the fixture files: never in the JSON API


def _sr(source: Dataset, uid_root: str) -> Dataset:
    """A small Comprehensive SR in the source's study (enough for DICOMweb)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UID(COMPREHENSIVE_SR)
    ds.SOPInstanceUID = UID(uid_root + ".2")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
                    "AccessionNumber", "StudyDescription"):
        if keyword in source:
            setattr(ds, keyword, getattr(source, keyword))
    ds.SeriesInstanceUID = uid_root + ".20"
    ds.Modality = "SR"
    ds.SeriesNumber = 101
    ds.InstanceNumber = 1
    ds.SeriesDescription = "AI report"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "126000", "DCM"
    concept.CodeMeaning = "Imaging Measurement Report"
    ds.ConceptNameCodeSequence = [concept]
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item_concept = Dataset()
    item_concept.CodeValue, item_concept.CodingSchemeDesignator = "121071", "DCM"
    item_concept.CodeMeaning = "Finding"
    item.ConceptNameCodeSequence = [item_concept]
    item.TextValue = "synthetic finding"
    ds.ContentSequence = [item]
    return ds


class SegAndSrProcessor:
    """Reads the job's files and writes a BINARY SEG (highdicom) and an SR, as the pipeline's
    processor does, with timings in the summary."""

    def process(self, request: ProcessRequest) -> ProcessOutcome:
        sources = sorted((dcmread(p) for p in request.files), key=lambda d: int(d.InstanceNumber))
        mask = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), bool)
        mask[:, 4:12, 3:9] = True
        mask[1, 0, 0] = True
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=mask,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[
                hd.seg.SegmentDescription(
                    segment_number=1,
                    segment_label="Lung",
                    segmented_property_category=codes.SCT.Tissue,
                    segmented_property_type=codes.SCT.Lung,
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
                )
            ],
            series_instance_uid=request.uid_root + ".10",
            series_number=100,
            sop_instance_uid=request.uid_root + ".1",
            instance_number=1,
            manufacturer="test",
            manufacturer_model_name="test",
            software_versions="0",
            device_serial_number="0",
        )
        seg_path = request.out_dir / "seg.dcm"
        seg.save_as(seg_path)
        sr = _sr(sources[0], request.uid_root)
        sr_path = request.out_dir / "sr.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        return ProcessOutcome(
            (
                ResultFile(seg_path, ResultKind.SEG, str(seg.SOPClassUID), seg.SOPInstanceUID,
                           seg.SeriesInstanceUID),
                ResultFile(sr_path, ResultKind.SR, COMPREHENSIVE_SR, sr.SOPInstanceUID,
                           sr.SeriesInstanceUID),
            ),
            {"classification": {"label": "covid", "p_covid": 0.91}, "lesions": [],
             "total_lung_volume_ml": 4321.0, "timings_s": dict(STAGE_TIMINGS_S)},
        )


def store(storage: Storage, recorder: InstanceRecorder, ds: Dataset, calling: str = "PACS") -> Path:
    """Store one instance as the C-STORE handler does: atomic file, then its row."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    path = storage.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    size = storage.write_atomic(path, [buffer.getvalue()])
    recorder.record(instance_record(
        dcmread(path, stop_before_pixels=True),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        path=storage.relative(path), size_bytes=size, calling_ae_title=calling,
    ))
    return path


@dataclass
class NodeState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    study_a: str
    chest_series: str
    scout_series: str
    study_b: str
    series_b: str
    chest: list[Dataset]  # as stored (uncompressed)
    scout: list[Dataset]  # RLE Lossless
    series_b_datasets: list[Dataset]  # RLE Lossless
    native_pixels: dict[str, bytes]  # SOP instance UID -> uncompressed pixel bytes
    job_id: int
    seg_uid: str
    seg_series: str
    sr_uid: str
    sr_series: str
    export_ids: dict[str, int] = field(default_factory=dict)  # "sent", "failed", "pending"

    def path_of(self, sop_uid: str) -> Path:
        for ds in self.chest + self.scout + self.series_b_datasets:
            if ds.SOPInstanceUID == sop_uid:
                return self.storage.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                  sop_uid)
        raise KeyError(sop_uid)

    def result_path(self, kind: str) -> Path:
        return self.storage.root / "outbox" / f"job-{self.job_id:08d}" / (
            "seg.dcm" if kind == "SEG" else "sr.dcm"
        )


def _study_attributes(ds: Dataset, accession: str, date: str, description: str) -> Dataset:
    """The patient and study attributes a scanner writes (highdicom copies them into the SEG)."""
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = date, "101500", "1"
    ds.AccessionNumber, ds.StudyDescription, ds.ReferringPhysicianName = accession, description, ""
    return ds


def _rle(ds: Dataset) -> Dataset:
    ds.compress(RLELossless, generate_instance_uid=False)
    return ds


def build_node_state(tmp: Path, database_url: str = "") -> NodeState:
    base = load_settings(None)
    settings = replace(
        base,
        node=replace(base.node, data_dir=tmp / "data", port=free_port(), quiet_period_s=0.5,
                     min_free_disk_mb=1, fsync=False, database_url=database_url),
        selection=replace(base.selection, min_slices=5),
        destinations=(
            Destination("pacs", "PACS", "127.0.0.1", 104, ("SEG", "SR")),
            Destination("archive", "ARCHIVE", "127.0.0.1", 105, ("SR",)),
        ),
        web=WebSettings(enabled=True, auth="token", token=TOKEN, ohif_dir=tmp / "no-viewer"),
    )
    settings.node.data_dir.mkdir(parents=True)
    engine, sessions = open_database(settings.database_url)
    storage = Storage(settings.node.data_dir, fsync=False)
    recorder = InstanceRecorder(sessions)

    study_a, chest_series, scout_series = (generate_uid(prefix=None) for _ in range(3))
    chest = [
        _study_attributes(ct_dataset(study_a, chest_series, i), "ACC-A", "20200315", "CT CHEST")
        for i in range(8)
    ]
    scout = []
    for i in range(2):
        ds = ct_dataset(study_a, scout_series, i, description="Topogram",
                        image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
        ds.SeriesNumber = 1
        scout.append(_study_attributes(ds, "ACC-A", "20200315", "CT CHEST"))
    native: dict[str, bytes] = {ds.SOPInstanceUID: bytes(ds.PixelData) for ds in chest + scout}
    scout = [_rle(ds) for ds in scout]
    for ds in chest + scout:
        store(storage, recorder, ds)

    Assembler(sessions, settings).evaluate_due(utcnow() + timedelta(seconds=60))
    processor: Any = SegAndSrProcessor()
    worker = Worker(settings, sessions, storage, processor, owner="test:1")
    if not worker.run_once():
        raise RuntimeError("the fixture's job did not run")
    log = ExportLog(sessions)
    with sessions() as s:
        rows = s.execute(select(Export.id, Export.destination).order_by(Export.id)).all()
    ids = [export_id for export_id, _ in rows]
    log.sent(ids[0], 0x0000)
    log.attempt_failed(ids[1], 0xA700, "Out of resources: the PACS refused", max_attempts=1,
                       backoff_initial_s=1, backoff_max_s=1)

    study_b, series_b = generate_uid(prefix=None), generate_uid(prefix=None)
    series_b_datasets = []
    for i in range(6):
        ds = _study_attributes(ct_dataset(study_b, series_b, i), "ACC-B", "20210102", "CT THORAX")
        ds.PatientName, ds.PatientID = "Other^Person", "SYN-002"
        native[ds.SOPInstanceUID] = bytes(ds.PixelData)
        series_b_datasets.append(_rle(ds))
        store(storage, recorder, ds)

    with sessions() as s:
        results = {r.kind: r for r in s.scalars(select(ResultObject))}
        job_id = results["SEG"].job_id
    return NodeState(
        settings=settings, engine=engine, sessions=sessions, storage=storage,
        study_a=study_a, chest_series=chest_series, scout_series=scout_series,
        study_b=study_b, series_b=series_b, chest=chest, scout=scout,
        series_b_datasets=series_b_datasets, native_pixels=native, job_id=job_id,
        seg_uid=results["SEG"].sop_instance_uid, seg_series=results["SEG"].series_instance_uid,
        sr_uid=results["SR"].sop_instance_uid, sr_series=results["SR"].series_instance_uid,
        export_ids={"sent": ids[0], "failed": ids[1], "pending": ids[2]},
    )


def make_client(state: NodeState, app: FastAPI | None = None, *, auth: bool = True) -> TestClient:
    client = TestClient(app or create_app(state.settings, state.sessions, state.storage))
    if auth:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
    return client


@pytest.fixture(scope="module")
def node_state(
    request: pytest.FixtureRequest, db_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeState]:
    """Shared by the tests of one module that only read (per database backend)."""
    url, drop = new_database(request, db_backend)
    state = build_node_state(tmp_path_factory.mktemp("node"), url)
    yield state
    state.engine.dispose()
    drop()


@pytest.fixture()
def fresh_state(
    request: pytest.FixtureRequest, db_backend: str, tmp_path: Path
) -> Iterator[NodeState]:
    """A node of its own, for tests that change state."""
    url, drop = new_database(request, db_backend)
    state = build_node_state(tmp_path, url)
    yield state
    state.engine.dispose()
    drop()


@pytest.fixture()
def client(node_state: NodeState) -> Iterator[TestClient]:
    with make_client(node_state) as c:
        yield c
