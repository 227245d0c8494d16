"""UPS-RS worklist and STOW-RS results on the real web app, database and files (the state
machine and STOW-RS on SQLite and on a real PostgreSQL).

The remote performer itself (``RemotePerformer`` with its DICOMweb client) runs against the
app in-process, with the small SEG + SR processor of the web fixtures.
"""

from __future__ import annotations

import io
import json
import random
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import Dataset, dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dicomnode.db.models import Export, Job, JobState, ResultObject, utcnow
from dicomnode.db.records import InstanceRecorder
from dicomnode.db.workitems import job_id_of
from dicomnode.jobs.assembler import Assembler
from dicomnode.remote.client import DicomwebClient
from dicomnode.remote.performer import PerformerSettings, RemotePerformer
from dicomnode.remote.workitem import WorkitemError, read_assignment
from dicomnode.web.app import create_app
from dicomnode.web.multipart import MultipartError, MultipartReader, Part, encode_multipart
from tests.dicomnode.conftest import both_backends, ct_dataset

from .conftest import TOKEN, NodeState, SegAndSrProcessor, _study_attributes, store

BASE = "http://testserver/dicom-web"
JSON = {"Content-Type": "application/dicom+json"}


@pytest.fixture()
def node(fresh_state: NodeState) -> NodeState:
    """The web fixtures' node plus one more study whose job is queued, not run."""
    study, series = generate_uid(prefix=None), generate_uid(prefix=None)
    recorder = InstanceRecorder(fresh_state.sessions)
    for i in range(8):
        ds = _study_attributes(ct_dataset(study, series, i), "ACC-C", "20220101", "CT CHEST")
        store(fresh_state.storage, recorder, ds)
    Assembler(fresh_state.sessions, fresh_state.settings).evaluate_due(
        utcnow() + timedelta(seconds=60))
    return fresh_state


@pytest.fixture()
def api(node: NodeState) -> Iterator[TestClient]:
    with TestClient(create_app(node.settings, node.sessions, node.storage)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


def scheduled(api: TestClient) -> list[dict]:
    response = api.get("/dicom-web/workitems", params={"ProcedureStepState": "SCHEDULED"})
    assert response.status_code == 200, response.text
    return response.json()


def uid_of(item: dict) -> str:
    return item["00080018"]["Value"][0]


def state_of(api: TestClient, uid: str) -> str:
    response = api.get(f"/dicom-web/workitems/{uid}")
    assert response.status_code == 200, response.text
    return response.json()[0]["00741000"]["Value"][0]


def set_state(api: TestClient, uid: str, state: str, txn: str | None) -> object:
    body: dict = {"00741000": {"vr": "CS", "Value": [state]}}
    if txn is not None:
        body["00081195"] = {"vr": "UI", "Value": [txn]}
    return api.put(f"/dicom-web/workitems/{uid}/state", content=json.dumps([body]), headers=JSON)


def heartbeat(api: TestClient, uid: str, txn: str) -> object:
    body = {"00741002": {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": [50]}}]}}
    return api.post(f"/dicom-web/workitems/{uid}", params={"transaction": txn},
                    content=json.dumps(body), headers=JSON)


def the_job(node: NodeState, uid: str) -> Job:
    job_id = job_id_of(uid)
    with node.sessions() as s:
        return s.get_one(Job, job_id)


def stow(api: TestClient, datasets: list[Dataset], txn: str | None) -> object:
    parts = []
    for ds in datasets:
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        parts.append(Part("application/dicom", data=buffer.getvalue()))
    boundary = uuid.uuid4().hex
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    if txn is not None:
        headers["Transaction-UID"] = txn
    return api.post("/dicom-web/studies", content=encode_multipart(parts, boundary),
                    headers=headers)


def result_like(node: NodeState, study_uid: str, sop_uid: str) -> Dataset:
    ds = dcmread(node.result_path("SR"))
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    return ds


@both_backends
def test_worklist_shows_only_the_queued_job_with_its_series(api: TestClient, node: NodeState
                                                            ) -> None:
    items = scheduled(api)
    assert len(items) == 2  # the fixture's two complete studies not yet analysed
    item = items[-1]
    inputs = item["00404021"]["Value"]
    url = inputs[0]["0040E025"]["Value"][0]["00081190"]["Value"][0]
    job = the_job(node, uid_of(item))
    assert url.endswith(f"/series/{inputs[0]['0020000E']['Value'][0]}")
    assert len(inputs[0]["00081199"]["Value"]) == job.instance_count == 8
    assert item["00100010"].get("Value") in (None, [])  # no patient name in the worklist
    assert "Test^Synthetic" not in json.dumps(item)
    done = api.get("/dicom-web/workitems", params={"ProcedureStepState": "COMPLETED"}).json()
    assert [state for d in done for state in d["00741000"]["Value"]] == ["COMPLETED"]
    assert api.get("/dicom-web/workitems", params={"ProcedureStepState": "X"}).status_code == 400
    anonymous = TestClient(api.app).get("/dicom-web/workitems")
    assert anonymous.status_code == 401


@both_backends
def test_state_machine_refuses_the_wrong_transaction(api: TestClient, node: NodeState) -> None:
    uid = uid_of(scheduled(api)[0])
    txn, other = generate_uid(), generate_uid()
    assert set_state(api, uid, "IN PROGRESS", None).status_code == 400
    assert set_state(api, uid, "COMPLETED", txn).status_code == 409  # not claimed yet
    assert set_state(api, uid, "IN PROGRESS", txn).status_code == 200
    assert state_of(api, uid) == "IN PROGRESS"
    assert uid not in [uid_of(i) for i in scheduled(api)]
    refused = set_state(api, uid, "IN PROGRESS", other)
    assert refused.status_code == 409 and "not SCHEDULED" in refused.headers["warning"]
    assert set_state(api, uid, "IN PROGRESS", txn).status_code == 409
    wrong = heartbeat(api, uid, other)
    assert wrong.status_code == 409 and "does not match" in wrong.headers["warning"]
    assert heartbeat(api, uid, txn).status_code == 200
    assert set_state(api, uid, "COMPLETED", other).status_code == 409
    assert set_state(api, uid, "SCHEDULED", txn).status_code == 400
    assert set_state(api, "2.25.1", "IN PROGRESS", txn).status_code == 404
    assert api.get("/dicom-web/workitems/2.25.99").status_code == 404
    # CANCELED with attempts left: the node schedules the job again, as for a local worker
    assert set_state(api, uid, "CANCELED", txn).status_code == 200
    assert state_of(api, uid) == "SCHEDULED"
    job = the_job(node, uid)
    assert job.state == JobState.QUEUED and "remote:" in job.error


@both_backends
def test_expired_lease_returns_the_workitem_and_locks_out_the_old_holder(
    api: TestClient, node: NodeState
) -> None:
    uid = uid_of(scheduled(api)[0])
    first, second = generate_uid(), generate_uid()
    assert set_state(api, uid, "IN PROGRESS", first).status_code == 200
    with node.sessions() as s, s.begin():
        s.execute(update(Job).where(Job.state == JobState.RUNNING)
                  .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert uid in [uid_of(i) for i in scheduled(api)]
    assert state_of(api, uid) == "SCHEDULED"
    assert set_state(api, uid, "IN PROGRESS", second).status_code == 200
    study = the_job_study(api, uid)
    late = stow(api, [result_like(node, study, generate_uid())], first)
    assert late.status_code == 409
    assert set_state(api, uid, "COMPLETED", first).status_code == 409
    assert heartbeat(api, uid, first).status_code == 409
    assert the_job(node, uid).attempts == 2


def the_job_study(api: TestClient, uid: str) -> str:
    return api.get(f"/dicom-web/workitems/{uid}").json()[0]["0020000D"]["Value"][0]


@both_backends
def test_stow_accepts_results_of_the_holder_only_and_is_idempotent(
    api: TestClient, node: NodeState
) -> None:
    uid = uid_of(scheduled(api)[0])
    txn = generate_uid()
    study = the_job_study(api, uid)
    result = result_like(node, study, generate_uid())
    assert stow(api, [result], None).status_code == 400
    assert stow(api, [result], txn).status_code == 409  # not claimed
    assert set_state(api, uid, "IN PROGRESS", txn).status_code == 200
    first = stow(api, [result], txn)
    assert first.status_code == 200, first.text
    again = stow(api, [result], txn)
    assert again.status_code == 200
    foreign = stow(api, [result_like(node, node.study_a, generate_uid())], txn)
    assert foreign.status_code == 409 and "00081198" in foreign.json()
    stolen = stow(api, [result_like(node, study, node.sr_uid)], txn)  # another job's result
    assert stolen.status_code == 409
    plain = api.post("/dicom-web/studies", content=b"x",
                     headers={"Content-Type": "application/dicom", "Transaction-UID": txn})
    assert plain.status_code == 415
    assert set_state(api, uid, "COMPLETED", txn).status_code == 200
    job = the_job(node, uid)
    with node.sessions() as s:
        rows = s.scalars(select(ResultObject).where(ResultObject.job_id == job.id)).all()
        exports = s.scalars(select(Export).where(
            Export.result_object_id.in_([r.id for r in rows]))).all()
    assert [r.sop_instance_uid for r in rows] == [result.SOPInstanceUID]
    assert rows[0].kind == "SR" and rows[0].path.startswith(f"outbox/job-{job.id:08d}/remote/")
    assert sorted(e.destination for e in exports) == ["archive", "pacs"]
    assert job.state == JobState.DONE and state_of(api, uid) == "COMPLETED"
    assert set_state(api, uid, "IN PROGRESS", generate_uid()).status_code == 409


def test_remote_performer_runs_the_job_and_the_node_records_it_as_a_local_worker_would(
    api: TestClient, node: NodeState, tmp_path: Path
) -> None:
    client = DicomwebClient(BASE, http=api)
    performer = RemotePerformer(
        client, SegAndSrProcessor(),
        PerformerSettings(heartbeat_s=0.05, poll_interval_s=0.1, work_dir=tmp_path / "scratch"),
    )
    uid = uid_of(scheduled(api)[0])
    assert performer.run_once() is True
    job = the_job(node, uid)
    assert job.state == JobState.DONE and job.attempts == 1
    assert job.summary is not None and job.summary["classification"]["label"] == "covid"
    with node.sessions() as s:
        kinds = sorted(s.scalars(select(ResultObject.kind).where(ResultObject.job_id == job.id)))
        exports = s.scalar(select(Export.id).join(ResultObject)
                           .where(ResultObject.job_id == job.id).limit(1))
    assert kinds == ["SEG", "SR"] and exports is not None
    seg = dcmread(next(node.storage.outbox_dir(job.id).glob("remote/*.dcm")))
    assert seg.SOPInstanceUID.startswith(job.uid_root)  # results derive from the job's root
    assert list((tmp_path / "scratch").iterdir()) == []  # scratch removed


class FailingProcessor:
    def process(self, request: object) -> object:
        error = ValueError("the series cannot be analysed")
        error.retryable = False  # type: ignore[attr-defined]
        raise error


def test_performer_failure_cancels_the_workitem_with_a_reason(
    api: TestClient, node: NodeState, tmp_path: Path
) -> None:
    client = DicomwebClient(BASE, http=api)
    performer = RemotePerformer(client, FailingProcessor(),  # type: ignore[arg-type]
                                PerformerSettings(heartbeat_s=5, work_dir=tmp_path))
    uid = uid_of(scheduled(api)[0])
    assert performer.run_once() is True
    job = the_job(node, uid)
    assert job.state == JobState.FAILED  # not retryable: failed for good
    assert job.error == "remote: ValueError: the series cannot be analysed"


class Sink:
    def __init__(self, got: list[bytearray]) -> None:
        self.got = got
        got.append(bytearray())

    def write(self, data: bytes) -> None:
        self.got[-1].extend(data)

    def close(self) -> None:
        pass


def test_multipart_reader_any_chunking() -> None:
    payloads = [b"", b"abc\r\n--notit", bytes(range(256)) * 50, b"--" * 30]
    boundary = uuid.uuid4().hex
    body = encode_multipart([Part("application/dicom", data=p) for p in payloads], boundary)
    rng = random.Random(4)
    for _ in range(30):
        got: list[bytearray] = []
        reader = MultipartReader(boundary, lambda _h, got=got: Sink(got))
        pos = 0
        while pos < len(body):
            step = rng.randint(1, 200)
            reader.feed(body[pos:pos + step])
            pos += step
        assert reader.finish() == len(payloads)
        assert [bytes(g) for g in got] == payloads
    truncated = MultipartReader(boundary, lambda _h: Sink([]))
    truncated.feed(body[:-10])
    with pytest.raises(MultipartError):
        truncated.finish()
    with pytest.raises(MultipartError):
        MultipartReader(boundary, lambda _h: Sink([]), max_bytes=100).feed(body)


def test_a_workitem_of_another_provider_is_read_with_standard_attributes_only() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "2.25.42"
    prior, images = Dataset(), Dataset()
    prior.StudyInstanceUID = images.StudyInstanceUID = "1.2.3"
    prior.SeriesInstanceUID, images.SeriesInstanceUID = "1.2.3.9", "1.2.3.4"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.34", "9.9"
    prior.ReferencedSOPSequence = [ref]
    ds.InputInformationSequence = [prior, images]
    assignment = read_assignment(ds, "http://pacs/dicom-web")
    assert assignment.retrieve_url == "http://pacs/dicom-web/studies/1.2.3/series/1.2.3.4"
    assert assignment.uid_root == "2.25.42"  # the same for every performer of the workitem
    assert [p.sop_instance_uid for p in assignment.predecessors] == ["9.9"]
    ds.InputInformationSequence = [prior]
    with pytest.raises(WorkitemError):
        read_assignment(ds, "http://pacs/dicom-web")
