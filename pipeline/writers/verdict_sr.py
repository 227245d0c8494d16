"""A radiologist's verdict on the AI's results as a Comprehensive 3D SR.

The report references the AI's measurement report (COMPOSITE) and, for each lesion reviewed,
the lesion's segment of the AI SEG (IMAGE with Referenced Segment Number); it says whether the
reader agrees with the classification, accepts or rejects each lesion, how many findings the AI
missed, and the reader's comment. The reader is the Verifying Observer, the Verification Flag
VERIFIED, the Completion Flag COMPLETE. Concepts no standard names for this review are in the
private scheme of ``pipeline.writers.codes``; yes/no answers are SNOMED CT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from pipeline.writers import codes
from pipeline.writers.seg import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    MANUFACTURER_MODEL_NAME,
    SOFTWARE_VERSIONS,
)
from pipeline.writers.uids import derive_uid

VERDICT_SR_SERIES_NUMBER = 9004
VERDICT_SR_SERIES_DESCRIPTION = "Radiologist review of AI results"
MAX_COMMENT_CHARS = 2000
_P = codes.PRIVATE_SCHEME
REVIEW_REPORT = CodedConcept("AIREVIEW", _P, "Radiologist review of AI results")
REVIEWED_REPORT = CodedConcept("AIREPORT", _P, "Reviewed AI report")
CLASSIFICATION_AGREED = CodedConcept("CLASSAGREE", _P, "Agrees with AI classification")
FINDING_REVIEW = CodedConcept("FINDINGREVIEW", _P, "Review of AI finding")
FINDING_ACCEPTED = CodedConcept("FINDINGACCEPT", _P, "AI finding accepted")
MISSED_FINDINGS = CodedConcept("MISSEDFINDINGS", _P, "Findings missed by AI")
TRACKING_IDENTIFIER = CodedConcept("112039", "DCM", "Tracking Identifier")
REFERENCED_SEGMENT = CodedConcept("121191", "DCM", "Referenced Segment")
COMMENT = CodedConcept("121106", "DCM", "Comment")
YES = CodedConcept("373066001", "SCT", "Yes")
NO = CodedConcept("373067005", "SCT", "No")
COUNT_UNIT = CodedConcept("{findings}", "UCUM", "findings")


@dataclass(frozen=True)
class VerdictContent:
    """What the reader said: ``findings`` maps lesion number to True (accepted) / False."""

    agrees: bool
    findings: Mapping[int, bool] = field(default_factory=dict)
    missed_findings: int = 0
    comment: str = ""


def _yes_no(value: bool) -> CodedConcept:
    return codes.fresh(YES if value else NO)


def lesion_segments(seg: Dataset | None) -> dict[int, int]:
    """Lesion number -> segment number, from the SEG's "Lesion N" segment labels."""
    found: dict[int, int] = {}
    for item in getattr(seg, "SegmentSequence", []) if seg is not None else []:
        label = str(getattr(item, "SegmentLabel", ""))
        if label.startswith("Lesion ") and label[7:].isdigit():
            found[int(label[7:])] = int(item.SegmentNumber)
    return found


def _finding(number: int, accepted: bool, seg: Dataset | None,
             segments: Mapping[int, int]) -> hd.sr.ContainerContentItem:
    group = hd.sr.ContainerContentItem(FINDING_REVIEW, relationship_type="CONTAINS")
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(TRACKING_IDENTIFIER, f"Lesion {number}",
                              relationship_type="CONTAINS"),
        hd.sr.CodeContentItem(FINDING_ACCEPTED, _yes_no(accepted), relationship_type="CONTAINS"),
    ]
    if seg is not None and number in segments:
        items.append(hd.sr.ImageContentItem(
            REFERENCED_SEGMENT, seg.SOPClassUID, seg.SOPInstanceUID,
            referenced_segment_numbers=segments[number], relationship_type="CONTAINS"))
    group.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    return group


def review_content(content: VerdictContent, ai_sr: Dataset,
                   seg: Dataset | None) -> hd.sr.ContainerContentItem:
    """The root container of the review."""
    segments = lesion_segments(seg)
    items: list[hd.sr.ContentItem] = [
        hd.sr.CompositeContentItem(REVIEWED_REPORT, ai_sr.SOPClassUID, ai_sr.SOPInstanceUID,
                                   relationship_type="CONTAINS"),
        hd.sr.CodeContentItem(CLASSIFICATION_AGREED, _yes_no(content.agrees),
                              relationship_type="CONTAINS"),
    ]
    items += [_finding(n, ok, seg, segments) for n, ok in sorted(content.findings.items())]
    items.append(hd.sr.NumContentItem(MISSED_FINDINGS, content.missed_findings, COUNT_UNIT,
                                      relationship_type="CONTAINS"))
    if content.comment.strip():
        items.append(hd.sr.TextContentItem(COMMENT, content.comment[:MAX_COMMENT_CHARS],
                                           relationship_type="CONTAINS"))
    root = hd.sr.ContainerContentItem(REVIEW_REPORT)
    root.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    return root


def write_verdict_sr(
    content: VerdictContent, ai_sr: Dataset, seg: Dataset | None, *, reader: str,
    organization: str, uid_root: str, out_path: Path,
) -> hd.sr.Comprehensive3DSR:
    """Build the verified review SR in the AI SR's study and write it to ``out_path``.

    ``uid_root`` makes the UIDs (the same verdict always gives the same object)."""
    # highdicom copies patient and study attributes from the first evidence object: the SEG
    # (when there is one) carries all of them.
    evidence = ([seg] if seg is not None else []) + [ai_sr]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=hd.sr.ContentSequence([review_content(content, ai_sr, seg)], is_root=True),
        series_instance_uid=derive_uid(uid_root, "verdict-series"),
        series_number=VERDICT_SR_SERIES_NUMBER,
        sop_instance_uid=derive_uid(uid_root, "verdict-sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=reader,
        verifying_organization=organization,
        series_description=VERDICT_SR_SERIES_DESCRIPTION,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=SOFTWARE_VERSIONS,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        coding_schemes=[codes.private_coding_scheme()],
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out_path)
    return sr


def write_verdict_file(
    ai_sr_path: Path, seg_path: Path | None, verdict: Mapping[str, object], *, reader: str,
    organization: str, uid_root: str, out_path: Path,
) -> dict[str, str]:
    """The node's entry point (``[pipeline] verdict_writer``), in plain values: read the AI SR
    and SEG files, write the review SR, return its UIDs and SOP class.

    ``verdict``: ``agrees`` (bool), ``findings`` (lesion number -> accepted bool),
    ``missed_findings`` (int), ``comment`` (str)."""
    from pydicom import dcmread

    findings = verdict.get("findings") or {}
    content = VerdictContent(
        agrees=bool(verdict["agrees"]),
        findings={int(k): bool(v) for k, v in dict(findings).items()},  # type: ignore[call-overload]
        missed_findings=int(verdict.get("missed_findings") or 0),  # type: ignore[call-overload]
        comment=str(verdict.get("comment") or ""),
    )
    ai_sr = dcmread(ai_sr_path)
    seg = dcmread(seg_path) if seg_path is not None else None
    sr = write_verdict_sr(content, ai_sr, seg, reader=reader, organization=organization,
                          uid_root=uid_root, out_path=out_path)
    return {"sop_instance_uid": str(sr.SOPInstanceUID),
            "series_instance_uid": str(sr.SeriesInstanceUID),
            "sop_class_uid": str(sr.SOPClassUID)}
