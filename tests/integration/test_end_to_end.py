"""A PACS (Orthanc) or a modality (dcmtk storescu) sends a real chest CT; SEG and SR come back.

The node runs as `dicomnode serve` in its own process group with one worker process; the
results are checked where the user meets them: in Orthanc, with dciodvfy and highdicom.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from tests.peers.dcmtk import storescu
from tests.peers.dicom3tools import dciodvfy_errors
from tests.peers.orthanc import OrthancPeer
from tests.peers.studies import PreparedSeries, recompress

from .node_process import NodeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
RESULT_TIMEOUT_S = 240.0


def node_for(orthanc: OrthancPeer, work_dir: Path, **sections) -> NodeProcess:
    return NodeProcess(
        work_dir,
        destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": orthanc.host,
                       "port": orthanc.dicom_port}],
        sections=sections,
    )


def results_in_pacs(orthanc: OrthancPeer, study_uid: str) -> dict[str, list]:
    found: dict[str, list] = {SEG_CLASS: [], SR_CLASS: []}
    for inst in orthanc.instances_of_study(study_uid):
        if inst.sop_class_uid in found:
            found[inst.sop_class_uid].append(inst)
    return found


def wait_for_results(orthanc: OrthancPeer, node: NodeProcess, study_uid: str) -> dict[str, list]:
    """SEG and SR in the PACS, and no job left queued or running (SEG and SR are handed to the
    exporter before the overlay is rendered, so they arrive before the job is done)."""
    results = node.wait_for(
        lambda: (lambda r: r if r[SEG_CLASS] and r[SR_CLASS] else None)(
            results_in_pacs(orthanc, study_uid)),
        RESULT_TIMEOUT_S, "SEG and SR in the PACS",
    )
    node.wait_for(
        lambda: not node.query("select 1 from jobs where state in ('queued', 'running')"),
        RESULT_TIMEOUT_S, "the job finished",
    )
    return results


MAIN_SR_SERIES_NUMBER = 9002  # the volumetric report; 9004 is the viewer outlines SR


def check_result_files(orthanc: OrthancPeer, results: dict[str, list], tmp: Path,
                       series: PreparedSeries) -> None:
    (seg_inst,) = results[SEG_CLASS]
    assert 1 <= len(results[SR_CLASS]) <= 2  # the report, plus outlines when lesions were found
    seg_path = tmp / "seg.dcm"
    seg_path.write_bytes(orthanc.get_file(seg_inst.orthanc_id))
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    reports = []
    for n, sr_inst in enumerate(results[SR_CLASS]):
        sr_path = tmp / f"sr{n}.dcm"
        sr_path.write_bytes(orthanc.get_file(sr_inst.orthanc_id))
        assert dciodvfy_errors(sr_path) == []
        reports.append(hd.sr.srread(sr_path))
    assert [int(r.SeriesNumber) for r in reports].count(MAIN_SR_SERIES_NUMBER) == 1
    for sr in reports:
        assert sr.StudyInstanceUID == seg.StudyInstanceUID == series.study_instance_uid
    referenced = {
        ref.ReferencedSOPInstanceUID
        for item in seg.ReferencedSeriesSequence
        for ref in item.ReferencedInstanceSequence
    }
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
               for p in series.files}
    assert referenced == sources


def test_orthanc_sends_study_and_receives_seg_and_sr(orthanc, covid_study, tmp_path) -> None:
    orthanc.upload(covid_study.files)
    with node_for(orthanc, tmp_path / "node") as node:
        orthanc.add_modality("chestct", node.ae_title, node.host, node.port)
        study_id = orthanc.find_by_study_uid(covid_study.study_instance_uid)
        orthanc.store_to_modality("chestct", [study_id])
        results = wait_for_results(orthanc, node, covid_study.study_instance_uid)
        check_result_files(orthanc, results, tmp_path, covid_study)
        rows = node.query("select state, attempts from jobs")
        assert rows == [("done", 1)]
        # Orthanc knows the node's AE title, so it confirms by storage commitment.
        node.wait_for(
            lambda: not node.query("select 1 from exports where state != 'committed'"),
            RESULT_TIMEOUT_S, "every export committed")
        per_kind = dict(node.query(
            "select r.kind, count(*) from exports e join result_objects r "
            "on e.result_object_id = r.id group by r.kind"))
        assert per_kind["SEG"] == 1 and per_kind["SR"] in (1, 2) and per_kind["OVERLAY"] > 50
        # the overlay series is in the PACS too, and every result is retrievable over DICOMweb
        in_pacs = orthanc.instances_of_study(covid_study.study_instance_uid)
        overlay = [i for i in in_pacs if i.sop_class_uid == SC_CLASS]
        assert len(overlay) == per_kind["OVERLAY"]
        for inst in (results[SEG_CLASS][0], results[SR_CLASS][0], overlay[0]):
            body = orthanc.wado_instance(covid_study.study_instance_uid,
                                         inst.series_instance_uid, inst.sop_instance_uid)
            assert inst.sop_instance_uid.encode() in body
        kinds = [k for (k,) in node.query("select kind from events order by id")]
        for expected in ("study-received", "study-complete", "job-queued", "job-started",
                         "job-done", "exported", "export-committed"):
            assert expected in kinds


@pytest.mark.parametrize(
    "syntax",
    [None, "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"],
    ids=["jpeg-lossless", "jpeg-ls", "jpeg-2000"],
)
def test_storescu_sends_study_in_each_compression(orthanc, covid_study, tmp_path, syntax) -> None:
    files = list(covid_study.files)
    if syntax is not None:
        files = recompress(files, tmp_path / "recompressed", syntax)
        assert str(pydicom.dcmread(files[0], stop_before_pixels=True)
                   .file_meta.TransferSyntaxUID) == syntax
    with node_for(orthanc, tmp_path / "node") as node:
        sent = storescu(files, node.host, node.port, node.ae_title)
        assert sent.returncode == 0, sent.stderr[-2000:]
        node.wait_for(lambda: node.query("select count(*) from instances")[0][0] == len(files),
                      10, "every instance row")
        (stored_syntaxes,) = node.query(
            "select group_concat(distinct transfer_syntax_uid) from instances")
        assert stored_syntaxes[0] == (syntax or "1.2.840.10008.1.2.4.70")
        results = wait_for_results(orthanc, node, covid_study.study_instance_uid)
        check_result_files(orthanc, results, tmp_path, covid_study)
