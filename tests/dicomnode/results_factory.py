"""Result objects for exporter tests: small files in the outbox, rows as a worker records them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import Export, Job, ResultObject, Study

from .conftest import ct_dataset

SOP_CLASSES = {
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",
    "SR": "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "OVERLAY": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
}


def result_dataset(study_uid: str, series_uid: str, kind: str, index: int,
                   size: int = 16) -> Dataset:
    """A small image carrying the SOP class of ``kind`` (the exporter does not look inside)."""
    ds = ct_dataset(study_uid, series_uid, index, size=size, sop_uid=generate_uid())
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[kind]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = {"SEG": "SEG", "SR": "SR"}.get(kind, "OT")
    if size > 64:  # realistic overlay size: RGB
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        del ds.RescaleIntercept, ds.RescaleSlope
        ds.PixelData = np.random.default_rng(index).integers(
            0, 255, (size, size, 3), dtype=np.uint8).tobytes()
    return ds


def add_results(
    sessions: sessionmaker[Session], data_dir: Path, job_id: int, kinds: Sequence[str],
    destinations: Sequence[str], size: int = 16,
) -> list[str]:
    """Write one object per entry of ``kinds`` for ``job_id`` and queue it to ``destinations``;
    return their SOP Instance UIDs in order."""
    uids = []
    with sessions() as session, session.begin():
        job = session.get_one(Job, job_id)
        study_uid = session.get_one(Study, job.study_id).study_instance_uid
        series = {k: generate_uid() for k in set(kinds)}
        for i, kind in enumerate(kinds):
            ds = result_dataset(study_uid, series[kind], kind, i, size)
            rel = Path("outbox") / str(job_id) / f"{kind}-{i}.dcm"
            (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(data_dir / rel, enforce_file_format=True)
            obj = ResultObject(job_id=job_id, kind=kind, sop_class_uid=ds.SOPClassUID,
                               sop_instance_uid=ds.SOPInstanceUID,
                               series_instance_uid=ds.SeriesInstanceUID, path=str(rel))
            session.add(obj)
            session.flush()
            for name in destinations:
                session.add(Export(result_object_id=obj.id, destination=name))
            uids.append(str(ds.SOPInstanceUID))
    return uids


def deliver(exporter: Any, expected: int, rounds: int = 3) -> int:
    """Export rounds until ``expected`` objects are delivered (at most ``rounds``).

    pynetdicom 3.0.4's SCU now and then loses a C-STORE response (docs/architecture.md): the
    exporter then leaves the object pending for the next round, as it should, so a test that
    counts deliveries must allow that round."""
    delivered = 0
    for _ in range(rounds):
        delivered += exporter.run_once()
        if delivered >= expected:
            break
    return delivered
