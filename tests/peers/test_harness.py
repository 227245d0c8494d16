"""Tests of the real-peer harness itself: the peers start, talk DICOM and DICOMweb, and the
study preparation keeps pixels bit-exact while giving the files valid UIDs."""

from __future__ import annotations

import io
import shutil
import socket
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from tests.peers.dcmtk import StorescpPeer, echoscu, storescu, transcode
from tests.peers.dicom3tools import dcentvfy_errors, dciodvfy_errors
from tests.peers.multipart import payloads
from tests.peers.orthanc import OrthancError, OrthancPeer, dicom_json_value
from tests.peers.ports import free_port, free_ports, port_accepts
from tests.peers.postgres import PostgresServer
from tests.peers.processes import MissingPeerError, find_tool
from tests.peers.studies import (
    PreparedSeries,
    is_valid_uid,
    make_large_series,
    read_dataset,
    recompress,
    rewrite_uids,
    uid_problems,
)

SUBSET_SIZE = 3
STUDY_INSTANCE_UID_TAG = "0020000D"


def _subset(study: PreparedSeries, count: int = SUBSET_SIZE) -> list[Path]:
    """A few consecutive slices from the middle of the study (fast tests need no more)."""
    middle = len(study.files) // 2
    return list(study.files[middle : middle + count])


def _copy_originals(src_dir: Path, dst_dir: Path, count: int) -> Path:
    dst_dir.mkdir(parents=True)
    for path in sorted(src_dir.iterdir())[:count]:
        shutil.copy(path, dst_dir / path.name)
    return dst_dir


# ------------------------------------------------------------------ ports and tools
def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
        assert not port_accepts(port)


def test_missing_tool_fails_with_install_hint() -> None:
    with pytest.raises(MissingPeerError, match="install-system.sh"):
        find_tool("no-such-dicom-tool-for-the-harness")


def test_payloads_splits_a_related_body() -> None:
    body = (
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n"
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nsecond\r\n--XyZ--\r\n"
    )
    parts = payloads(body, 'multipart/related; type="application/dicom"; boundary=XyZ')
    assert parts == [b"first", b"second"]


# ------------------------------------------------------------------ study preparation
def test_original_files_are_refused_by_pydicom_validation(shared_data: Path) -> None:
    original = shared_data / "covid-ct-md" / "series" / "COVID-19" / "P002" / "IM0001.dcm"
    settings = pydicom_config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom_config.RAISE
    try:
        with pytest.raises(ValueError, match="Invalid value for VR UI"):
            pydicom.dcmread(original).StudyInstanceUID  # noqa: B018 (the access validates)
    finally:
        settings.reading_validation_mode = previous
    problems = uid_problems(read_dataset(original))
    assert any(p.startswith("StudyInstanceUID") for p in problems)
    assert any(p.startswith("SOPInstanceUID") for p in problems)
    assert any(p.startswith("MediaStorageSOPInstanceUID") for p in problems)


def test_rewritten_uids_are_valid_and_keep_pixel_bytes(
    covid_study: PreparedSeries, shared_data: Path
) -> None:
    assert len(covid_study) == 133
    assert covid_study.study_instance_uid.startswith("2.25.")
    sop_uids = set()
    for path in covid_study.files:
        ds = read_dataset(path, stop_before_pixels=True)
        assert uid_problems(ds) == [], path
        assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
        sop_uids.add(str(ds.SOPInstanceUID))
    assert len(sop_uids) == len(covid_study.files)
    original_dir = shared_data / "covid-ct-md" / "series" / "COVID-19" / "P002"
    for path in _subset(covid_study):
        rewritten = read_dataset(path)
        original = read_dataset(original_dir / path.name)
        assert rewritten.PixelData == original.PixelData
        assert rewritten.InstanceNumber == original.InstanceNumber
    uid_errors = [e for e in dciodvfy_errors(covid_study.files[0]) if "UID" in e]
    assert uid_errors == []


def test_rewrite_is_deterministic_and_salt_gives_fresh_uids(
    covid_study: PreparedSeries, shared_data: Path, tmp_path: Path
) -> None:
    originals = _copy_originals(
        shared_data / "covid-ct-md" / "series" / "COVID-19" / "P002", tmp_path / "orig", 3
    )
    again = rewrite_uids(originals, tmp_path / "again")
    salted = rewrite_uids(originals, tmp_path / "salted", salt="run-2")
    by_name = {p.name: p for p in covid_study.files}
    for same, fresh in zip(again, salted, strict=True):
        a = read_dataset(same, stop_before_pixels=True)
        b = read_dataset(by_name[same.name], stop_before_pixels=True)
        c = read_dataset(fresh, stop_before_pixels=True)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                        "FrameOfReferenceUID"):
            assert a[keyword].value == b[keyword].value
            assert c[keyword].value != a[keyword].value
            assert is_valid_uid(str(c[keyword].value))
    # Rewriting already valid files without a salt changes nothing.
    idempotent = rewrite_uids(tmp_path / "again", tmp_path / "idempotent")
    assert read_dataset(idempotent[0]).SOPInstanceUID == read_dataset(again[0]).SOPInstanceUID


@pytest.mark.parametrize(
    "transfer_syntax",
    [JPEGLSLossless, JPEG2000Lossless, RLELossless, DeflatedExplicitVRLittleEndian,
     ExplicitVRLittleEndian],
    ids=["jpeg-ls", "jpeg2000", "rle", "deflated", "explicit-le"],
)
def test_recompression_round_trips_pixels_exactly(
    covid_study: PreparedSeries, tmp_path: Path, transfer_syntax: str
) -> None:
    sources = _subset(covid_study, 2)
    written = recompress(sources, tmp_path, transfer_syntax)
    for source, out in zip(sources, written, strict=True):
        before, after = read_dataset(source), read_dataset(out)
        assert after.file_meta.TransferSyntaxUID == transfer_syntax
        assert after.SOPInstanceUID == before.SOPInstanceUID
        assert uid_problems(after) == []
        assert np.array_equal(after.pixel_array, before.pixel_array)


def test_recompress_refuses_lossy_targets(covid_study: PreparedSeries, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported target"):
        recompress(_subset(covid_study, 1), tmp_path, JPEGLSNearLossless)


def test_dcmtk_jpegls_encoder_agrees_with_pydicom(
    covid_study: PreparedSeries, tmp_path: Path
) -> None:
    source = _subset(covid_study, 1)[0]
    out = transcode(source, tmp_path / "dcmtk-jls.dcm", JPEGLSLossless)
    encoded = read_dataset(out)
    assert encoded.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert np.array_equal(encoded.pixel_array, read_dataset(source).pixel_array)


def test_make_large_series_builds_a_continuous_stack(
    shared_data: Path, tmp_path: Path
) -> None:
    src = _copy_originals(
        shared_data / "covid-ct-md" / "series" / "COVID-19" / "P002", tmp_path / "src", 4
    )
    files = make_large_series(src, tmp_path / "large", n=10)
    datasets = [read_dataset(p) for p in files]
    assert [int(d.InstanceNumber) for d in datasets] == list(range(1, 11))
    assert len({d.SOPInstanceUID for d in datasets}) == 10
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert all(uid_problems(d) == [] for d in datasets)
    z = np.array([float(d.ImagePositionPatient[2]) for d in datasets])
    assert np.allclose(np.diff(z), -2.0)
    # Four source slices reused back and forth: 0 1 2 3 2 1 0 1 2 3.
    originals = sorted(
        (read_dataset(p) for p in sorted(src.iterdir())),
        key=lambda d: -float(d.ImagePositionPatient[2]),
    )
    expected = [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [d.PixelData for d in datasets] == [originals[i].PixelData for i in expected]
    again = make_large_series(src, tmp_path / "again", n=10)
    assert read_dataset(again[3]).SOPInstanceUID == datasets[3].SOPInstanceUID


# ------------------------------------------------------------------ dicom3tools
def test_dciodvfy_and_dcentvfy_find_real_errors(
    covid_study: PreparedSeries, shared_data: Path, tmp_path: Path
) -> None:
    broken = shared_data / "covid-ct-md" / "series" / "COVID-19" / "P002" / "IM0001.dcm"
    assert any("SOPInstanceUID" in e for e in dciodvfy_errors(broken))
    first, second = _subset(covid_study, 2)
    assert dcentvfy_errors([first, second]) == []
    other = read_dataset(second)
    other.PatientID = "SOMEONE-ELSE"
    other.save_as(tmp_path / "other.dcm")
    errors = dcentvfy_errors([first, tmp_path / "other.dcm"])
    assert any("PatientID" in e for e in errors)


# ------------------------------------------------------------------ dcmtk peers
@pytest.mark.integration
def test_storescp_receives_bit_identical_files_from_storescu(
    covid_study: PreparedSeries, storescp: StorescpPeer
) -> None:
    sources = _subset(covid_study)
    result = storescu(sources, storescp.host, storescp.port, storescp.aet)
    assert result.returncode == 0, result.stderr
    received = storescp.wait_for_files(len(sources), timeout_s=10)
    sent = {read_dataset(p).SOPInstanceUID: read_dataset(p) for p in sources}
    for path in received:
        ds = read_dataset(path)
        assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
        assert ds.PixelData == sent[ds.SOPInstanceUID].PixelData


@pytest.mark.integration
def test_echoscu_succeeds_only_against_a_live_peer(storescp: StorescpPeer) -> None:
    assert echoscu(storescp.host, storescp.port, storescp.aet).returncode == 0
    closed = free_port()
    assert echoscu("127.0.0.1", closed, "NOBODY", timeout_s=2).returncode != 0


# ------------------------------------------------------------------ Orthanc
@pytest.mark.integration
def test_orthanc_starts_with_dicomweb_and_gdcm(orthanc: OrthancPeer) -> None:
    system = orthanc.system()
    assert system["DicomAet"] == orthanc.aet
    assert system["DicomPort"] == orthanc.dicom_port
    assert {"dicom-web", "gdcm"} <= set(orthanc.plugins())
    assert echoscu(orthanc.host, orthanc.dicom_port, orthanc.aet).returncode == 0


@pytest.mark.integration
def test_orthanc_rest_upload_queries_and_dicomweb(
    orthanc: OrthancPeer, covid_study: PreparedSeries
) -> None:
    sources = _subset(covid_study)
    answers = orthanc.upload(sources)
    assert [a["Status"] for a in answers] == ["Success"] * len(sources)
    assert [a["Status"] for a in orthanc.upload(sources[:1])] == ["AlreadyStored"]
    study_id = orthanc.find_by_study_uid(covid_study.study_instance_uid)
    assert study_id is not None and orthanc.studies() == [study_id]
    assert len(orthanc.series_of(study_id)) == 1
    instances = orthanc.instances_of_study(covid_study.study_instance_uid)
    assert {i.sop_class_uid for i in instances} == {CTImageStorage}
    assert {i["Modality"] for i in instances} == {"CT"}
    sent = {str(read_dataset(p).SOPInstanceUID): p for p in sources}
    assert {i.sop_instance_uid for i in instances} == set(sent)
    stored = orthanc.get_file(instances[0].orthanc_id)
    assert stored == sent[instances[0].sop_instance_uid].read_bytes()

    studies = orthanc.qido_studies(StudyInstanceUID=covid_study.study_instance_uid)
    assert [dicom_json_value(s, STUDY_INSTANCE_UID_TAG) for s in studies] == [
        covid_study.study_instance_uid
    ]
    series = orthanc.qido_series(covid_study.study_instance_uid)
    assert [dicom_json_value(s, "0020000E") for s in series] == [covid_study.series_instance_uid]
    sop = instances[0].sop_instance_uid
    wado = pydicom.dcmread(
        io.BytesIO(
            orthanc.wado_instance(
                covid_study.study_instance_uid, covid_study.series_instance_uid, sop
            )
        )
    )
    assert wado.SOPInstanceUID == sop
    assert wado.PixelData == read_dataset(sent[sop]).PixelData

    orthanc.delete_all()
    assert orthanc.studies() == []
    assert orthanc.qido_studies() == []


@pytest.mark.integration
def test_storescu_keeps_jpegls_and_orthanc_decodes_jpeg2000_with_gdcm(
    orthanc: OrthancPeer, covid_study: PreparedSeries, tmp_path: Path
) -> None:
    source = _subset(covid_study, 1)
    jls = recompress(source, tmp_path / "jls", JPEGLSLossless)
    j2k = rewrite_uids(
        tmp_path / "jls", tmp_path / "j2k-src", salt="j2k"
    )  # a different instance for the JPEG 2000 copy
    j2k = recompress(j2k, tmp_path / "j2k", JPEG2000Lossless)
    for files in (jls, j2k):
        result = storescu(files, orthanc.host, orthanc.dicom_port, orthanc.aet)
        assert result.returncode == 0, result.stderr
    orthanc.wait_for(lambda: orthanc.instance_count() == 2, timeout_s=10, what="2 instances")
    syntaxes = set()
    for instance_id in orthanc.get_json("/instances"):
        syntaxes.add(orthanc.get_text(f"/instances/{instance_id}/metadata/TransferSyntax"))
        png, headers = orthanc.request("GET", f"/instances/{instance_id}/preview")
        assert png.startswith(b"\x89PNG"), headers
    assert syntaxes == {JPEGLSLossless, JPEG2000Lossless}


@pytest.mark.integration
def test_orthanc_stores_to_a_registered_modality(
    orthanc: OrthancPeer, storescp: StorescpPeer, covid_study: PreparedSeries
) -> None:
    sources = _subset(covid_study, 2)
    orthanc.upload(sources)
    orthanc.add_modality("fakepacs", storescp.aet, storescp.host, storescp.port)
    assert orthanc.echo_modality("fakepacs")
    study_id = orthanc.find_by_study_uid(covid_study.study_instance_uid)
    assert study_id is not None
    orthanc.store_to_modality("fakepacs", [study_id], synchronous=True)
    received = storescp.wait_for_files(2, timeout_s=10)
    assert {read_dataset(p).SOPInstanceUID for p in received} == {
        read_dataset(p).SOPInstanceUID for p in sources
    }
    job_id = orthanc.store_to_modality("fakepacs", [study_id], synchronous=False)["ID"]

    def finished_job() -> dict[str, object] | None:
        job = orthanc.job(job_id)
        return job if job["State"] in ("Success", "Failure") else None

    done = orthanc.wait_for(finished_job, timeout_s=20, what="asynchronous store job")
    assert done["State"] == "Success"


@pytest.mark.integration
def test_storescu_sends_the_whole_study_to_orthanc(
    orthanc: OrthancPeer, covid_study: PreparedSeries
) -> None:
    result = storescu(covid_study.directory, orthanc.host, orthanc.dicom_port, orthanc.aet)
    assert result.returncode == 0, result.stderr
    orthanc.wait_for(lambda: orthanc.instance_count() == len(covid_study), timeout_s=30,
                     what="whole study stored")
    studies = orthanc.qido_studies(StudyInstanceUID=covid_study.study_instance_uid)
    assert len(studies) == 1
    assert dicom_json_value(studies[0], "00201208") == len(covid_study)  # instances in study


@pytest.mark.integration
def test_orthanc_peer_reports_startup_failure_with_log(tmp_path: Path) -> None:
    bad = OrthancPeer(work_dir=tmp_path, extra_config={"HttpPort": "not-a-port"},
                      stop_grace_s=1.0)
    with pytest.raises(OrthancError, match="log"):
        bad.start()
    bad.stop()
    assert bad.log_path.exists()


# ------------------------------------------------------------------ PostgreSQL
def test_postgres_peer_gives_each_test_its_own_database(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x integer)"))
        conn.execute(text("INSERT INTO t VALUES (1), (2)"))
        version = conn.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    assert str(version).startswith("15")
    template = postgres_url.rsplit("/", 1)[1]
    copy = postgres_server.create_database(template=template)
    engine = create_engine(copy)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(x) FROM t")).scalar_one() == 3
    engine.dispose()
    postgres_server.drop_database(copy.rsplit("/", 1)[1])
