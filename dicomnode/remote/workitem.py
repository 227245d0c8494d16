"""UPS workitem data sets as both sides of the IHE AIW-I task exchange read and write them.

The node (UPS-RS provider, ``dicomnode.web.ups``) describes a job with :func:`workitem_dataset`;
the remote performer (``dicomnode.remote.performer``) reads it with :func:`read_assignment`
and reports progress, output and failure with the ``*_update`` builders. Everything here is
plain pydicom: no database, no web framework, no patient attributes (Patient's Name and ID are
present, as the UPS IOD requires, but empty: the performer reads the images themselves).

Two private attributes (creator ``DICOMNODE 1``, group 0009) carry what the standard has no
slot for; any other UPS-RS provider ignores them:

- (0009,1001) UI: the root every result UID derives from. Fixed when the job is first claimed,
  the same for every attempt, so a re-run after a killed performer writes the same objects.
- (0009,1002) UT: the analysis summary (JSON), sent with the last update before COMPLETED.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom import Dataset

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "DICOMNODE 1"
CREATOR_TAG = 0x00090010
UID_ROOT_TAG = 0x00091001
SUMMARY_TAG = 0x00091002
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
TASK_CODE = ("CHESTCT-ANALYSIS", "99DICOMNODE", "Chest CT lung and lesion analysis")
# CID 9300 discontinuation reasons a performer sends with CANCELED: the first asks the node
# to schedule the job again, the second says the input itself cannot be analysed.
RETRY_CODE = ("110529", "DCM", "Discontinued Procedure Step rescheduling recommended")
NO_RETRY_CODE = ("110521", "DCM", "Objects incorrectly formatted")
EXPIRED_CODE = ("110533", "DCM", "Workitem expired")


def dicom_datetime(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y%m%d%H%M%S")


def _code(value: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def _sop_refs(refs: Iterable[tuple[str, str]]) -> list[Dataset]:
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    return items


def _instances_item(
    study_uid: str, series_uid: str, refs: Iterable[tuple[str, str]], retrieve_url: str = ""
) -> Dataset:
    item = Dataset()
    item.TypeOfInstances = "DICOM"
    item.StudyInstanceUID = study_uid
    item.SeriesInstanceUID = series_uid
    item.ReferencedSOPSequence = _sop_refs(refs)
    if retrieve_url:
        wado = Dataset()
        wado.RetrieveURL = retrieve_url
        item.WADORSRetrievalSequence = [wado]
    return item


def set_private(ds: Dataset, tag: int, vr: str, value: str) -> None:
    ds.add_new(CREATOR_TAG, "LO", PRIVATE_CREATOR)
    ds.add_new(tag, vr, value)


def get_private(ds: Dataset, tag: int) -> str:
    """A value of our private block, or "" (also when another creator owns the block)."""
    creator = ds.get(CREATOR_TAG)
    element = ds.get(tag)
    if creator is None or element is None or str(creator.value).strip() != PRIVATE_CREATOR:
        return ""
    return str(element.value or "")


@dataclass(frozen=True)
class Predecessor:
    """An SR sent earlier for the same study (a predecessor document of the new SR)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class WorkitemFacts:
    """What the node puts into a workitem (built from its job; see ``dicomnode.db.workitems``)."""

    uid: str
    state: str
    study_instance_uid: str
    series_instance_uid: str
    instances: Sequence[tuple[str, str]]
    scheduled_at: datetime
    uid_root: str
    predecessors: Sequence[Predecessor]


def workitem_dataset(facts: WorkitemFacts, dicomweb_base: str) -> Dataset:
    """The UPS data set of one job: task, state, and the series to analyse with its WADO-RS URL."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = UPS_PUSH_SOP_CLASS
    ds.SOPInstanceUID = facts.uid
    ds.ProcedureStepState = facts.state
    ds.ScheduledProcedureStepPriority = "MEDIUM"
    ds.ProcedureStepLabel = "Chest CT analysis"
    ds.WorklistLabel = "dicomnode"
    ds.ScheduledProcedureStepStartDateTime = dicom_datetime(facts.scheduled_at)
    ds.InputReadinessState = "READY"
    ds.ScheduledWorkitemCodeSequence = [_code(TASK_CODE)]
    ds.PatientName = ""
    ds.PatientID = ""
    ds.StudyInstanceUID = facts.study_instance_uid
    url = (
        f"{dicomweb_base}/studies/{facts.study_instance_uid}"
        f"/series/{facts.series_instance_uid}"
    )
    items = [
        _instances_item(facts.study_instance_uid, facts.series_instance_uid, facts.instances, url)
    ]
    for prior in facts.predecessors:
        items.append(_instances_item(
            prior.study_instance_uid, prior.series_instance_uid,
            [(prior.sop_class_uid, prior.sop_instance_uid)],
        ))
    ds.InputInformationSequence = items
    if facts.uid_root:
        set_private(ds, UID_ROOT_TAG, "UI", facts.uid_root)
    return ds


@dataclass(frozen=True)
class Assignment:
    """What a performer needs from a claimed workitem."""

    uid: str
    study_instance_uid: str
    series_instance_uid: str
    retrieve_url: str
    instance_count: int
    uid_root: str
    predecessors: tuple[Predecessor, ...]


class WorkitemError(ValueError):
    """A workitem lacks what a performer needs (no image series among its inputs)."""


def _is_sr_item(item: Dataset) -> bool:
    refs = item.get("ReferencedSOPSequence") or []
    return bool(refs) and all(
        str(r.get("ReferencedSOPClassUID", "")).startswith(SR_CLASS_PREFIX) for r in refs
    )


def _retrieve_url(item: Dataset, dicomweb_base: str) -> str:
    for wado in item.get("WADORSRetrievalSequence") or []:
        if wado.get("RetrieveURL"):
            return str(wado.RetrieveURL)
    if item.get("RetrieveURL"):
        return str(item.RetrieveURL)
    return f"{dicomweb_base}/studies/{item.StudyInstanceUID}/series/{item.SeriesInstanceUID}"


def read_assignment(ds: Dataset, dicomweb_base: str) -> Assignment:
    """The image series to analyse (the first input that is not an SR) and the SR inputs.

    Without a private UID root (another provider), results derive from the workitem UID: the
    same for every performer that runs the workitem.
    """
    images: Dataset | None = None
    priors = []
    for item in ds.get("InputInformationSequence") or []:
        if _is_sr_item(item):
            for ref in item.ReferencedSOPSequence:
                priors.append(Predecessor(
                    str(item.StudyInstanceUID), str(item.SeriesInstanceUID),
                    str(ref.ReferencedSOPInstanceUID), str(ref.ReferencedSOPClassUID),
                ))
        elif images is None and "SeriesInstanceUID" in item:
            images = item
    if images is None:
        raise WorkitemError("the workitem names no image series in its Input Information")
    uid = str(ds.SOPInstanceUID)
    return Assignment(
        uid=uid,
        study_instance_uid=str(images.StudyInstanceUID),
        series_instance_uid=str(images.SeriesInstanceUID),
        retrieve_url=_retrieve_url(images, dicomweb_base),
        instance_count=len(images.get("ReferencedSOPSequence") or []),
        uid_root=get_private(ds, UID_ROOT_TAG) or uid,
        predecessors=tuple(priors),
    )


def _progress_item(percent: float, description: str) -> Dataset:
    item = Dataset()
    item.ProcedureStepProgress = f"{max(0.0, min(100.0, percent)):.0f}"
    item.ProcedureStepProgressDescription = description[:64]
    return item


def progress_update(percent: float, description: str) -> Dataset:
    """Update Workitem payload for a heartbeat: how far the performer is."""
    ds = Dataset()
    ds.ProcedureStepProgressInformationSequence = [_progress_item(percent, description)]
    return ds


def output_update(
    study_uid: str, outputs: Sequence[tuple[str, str, str]], summary_json: str
) -> Dataset:
    """Update Workitem payload before COMPLETED: the stored results and the summary.

    ``outputs`` are (series UID, SOP class, SOP instance) of each stored object.
    """
    by_series: dict[str, list[tuple[str, str]]] = {}
    for series_uid, sop_class, sop_instance in outputs:
        by_series.setdefault(series_uid, []).append((sop_class, sop_instance))
    performed = Dataset()
    performed.OutputInformationSequence = [
        _instances_item(study_uid, series_uid, refs) for series_uid, refs in by_series.items()
    ]
    ds = Dataset()
    ds.ProcedureStepProgressInformationSequence = [_progress_item(100, "results stored")]
    ds.UnifiedProcedureStepPerformedProcedureSequence = [performed]
    set_private(ds, SUMMARY_TAG, "UT", summary_json)
    return ds


def failure_update(reason: str, retry: bool, now: datetime) -> Dataset:
    """Update Workitem payload before CANCELED: why (no patient data) and whether to retry."""
    item = _progress_item(0, "failed")
    item.ProcedureStepCancellationDateTime = dicom_datetime(now)
    item.ReasonForCancellation = reason[:1000]
    item.ProcedureStepDiscontinuationReasonCodeSequence = [
        _code(RETRY_CODE if retry else NO_RETRY_CODE)
    ]
    ds = Dataset()
    ds.ProcedureStepProgressInformationSequence = [item]
    return ds


@dataclass(frozen=True)
class Report:
    """What the node keeps of a performer's updates until the final state change."""

    percent: float | None
    reason: str
    retry: bool
    summary_json: str


def read_report(ds: Dataset) -> Report:
    percent: float | None = None
    reason, retry = "", True
    for item in ds.get("ProcedureStepProgressInformationSequence") or []:
        if item.get("ProcedureStepProgress") is not None:
            try:
                percent = float(item.ProcedureStepProgress)
            except (TypeError, ValueError):
                percent = None
        if item.get("ReasonForCancellation"):
            reason = str(item.ReasonForCancellation)
        for code in item.get("ProcedureStepDiscontinuationReasonCodeSequence") or []:
            if str(code.get("CodeValue", "")) == NO_RETRY_CODE[0]:
                retry = False
    return Report(percent, reason, retry, get_private(ds, SUMMARY_TAG))
