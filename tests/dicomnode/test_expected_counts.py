"""Completion by expected counts: Orthanc sends a study to the node's receiver and answers the
node's C-FIND for NumberOfSeriesRelatedInstances; the quiet period stays the fallback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from dicomnode.config import Source
from dicomnode.db.models import Event, utcnow
from dicomnode.jobs.assembler import Assembler
from tests.peers.orthanc import OrthancPeer

from .conftest import ct_series, free_port

QUIET_S = 60.0


@pytest.fixture()
def orthanc_with_study(tmp_path, settings) -> Iterator[tuple[OrthancPeer, str]]:
    folder = tmp_path / "study"
    folder.mkdir()
    series = ct_series(45)
    for i, ds in enumerate(series):
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    node = {"node": ("CHESTCT", "127.0.0.1", settings.node.port)}
    with OrthancPeer(tmp_path / "orthanc", modalities=node, stop_grace_s=1.0) as peer:
        peer.upload(folder)
        yield peer, str(series[0].StudyInstanceUID)


def assembler_for(settings, sessions, source: Source) -> Assembler:
    node = replace(settings.node, quiet_period_s=QUIET_S, expected_counts_after_s=0.3)
    return Assembler(sessions, replace(settings, node=node, sources=(source,)))


def events(sessions, kind: str) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(Event.message).where(Event.kind == kind)))


@pytest.mark.slow
def test_study_from_orthanc_completes_when_counts_match(settings, sessions, receiver,
                                                        orthanc_with_study) -> None:
    orthanc, study_uid = orthanc_with_study
    source = Source("pacs", orthanc.aet, orthanc.host, orthanc.dicom_port)
    assembler = assembler_for(settings, sessions, source)
    orthanc.store_to_modality("node", [orthanc.find_by_study_uid(study_uid)])
    sent = time.monotonic()
    queued: list[int] = []
    while not queued and time.monotonic() - sent < 10:
        queued = assembler.evaluate_due()
        time.sleep(0.1)
    assert queued, "the study was not completed by counts"
    assert time.monotonic() - sent < QUIET_S
    (matched,) = events(sessions, "counts-matched")
    assert "1 series complete (45 instances" in matched


@pytest.mark.slow
def test_partial_study_or_failed_query_waits_for_the_quiet_period(
        settings, sessions, receiver, orthanc_with_study) -> None:
    orthanc, study_uid = orthanc_with_study
    source = Source("pacs", orthanc.aet, orthanc.host, orthanc.dicom_port)
    assembler = assembler_for(settings, sessions, source)
    study = orthanc.find_by_study_uid(study_uid)
    (series,) = orthanc.series_of(study)
    by_number = sorted(series["Instances"],
                       key=lambda i: int(orthanc.simplified_tags(i)["InstanceNumber"]))
    orthanc.store_to_modality("node", by_number[:40])  # the first 40 of 45 slices
    time.sleep(0.5)
    assert assembler.evaluate_due() == []
    assert not events(sessions, "counts-matched")
    # The PACS cannot be asked: also the quiet period.
    dead = assembler_for(settings, sessions, replace(source, port=free_port()))
    assert dead.evaluate_due() == []
    assert events(sessions, "counts-unavailable")
    assert len(assembler.evaluate_due(utcnow() + timedelta(seconds=QUIET_S + 1))) == 1
