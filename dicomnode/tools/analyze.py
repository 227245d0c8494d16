"""`dicomnode analyze`: the pipeline on a folder of DICOM files; no network, no database.

The series is chosen by the same rules as in the node; files whose UIDs are broken (as some
exports are) are repaired by the processor for this offline run only and the repair is logged.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from dicomnode.config import Settings, pipeline_options
from dicomnode.contracts import ProcessRequest
from dicomnode.errors import DicomNodeError
from dicomnode.jobs.processing import load_processor
from dicomnode.jobs.selection import InstanceGeometry, SeriesCandidate, choose_series
from dicomnode.receiving.headers import instance_record, text_value
from dicomnode.tools.send import dicom_files
from dicomnode.tools.uidfix import lenient_reading

log = logging.getLogger(__name__)


def _candidates(files: list[Path]) -> tuple[list[SeriesCandidate], dict[str, list[Path]]]:
    geometry: dict[str, list[InstanceGeometry]] = defaultdict(list)
    paths: dict[str, list[Path]] = defaultdict(list)
    info: dict[str, tuple[str, str]] = {}
    for path in files:
        # Malformed UIDs are read without a warning per value: the processor repairs them and
        # logs one line per series.
        with lenient_reading():
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError):
                log.info("not a DICOM file, ignored: %s", path)
                continue
            series = str(ds.get("SeriesInstanceUID", "")) or "(no series uid)"
            info.setdefault(
                series, (text_value(ds, "Modality"), text_value(ds, "SeriesDescription"))
            )
            paths[series].append(path)
            record = instance_record(
                ds, sop_class_uid=str(ds.get("SOPClassUID", "")), transfer_syntax_uid="",
                path=str(path), size_bytes=0,
            )
        geometry[series].append(InstanceGeometry.of(record))
    candidates = [
        SeriesCandidate(uid, info[uid][0], info[uid][1], tuple(geometry[uid])) for uid in paths
    ]
    return candidates, paths


def analyze_directory(input_dir: Path, out_dir: Path, settings: Settings) -> dict[str, Any]:
    """Run the configured processor on the best series in ``input_dir``; write summary.json."""
    files = dicom_files([input_dir])
    candidates, paths = _candidates(files)
    selection = choose_series(candidates, settings.selection)
    skipped = [{"series": s.series_instance_uid, "reason": s.reason} for s in selection.skipped]
    if selection.chosen is None:
        reasons = "; ".join(f"{s['series']}: {s['reason']}" for s in skipped) or "no DICOM files"
        raise DicomNodeError(f"no analysable axial CT series in {input_dir} ({reasons})")
    chosen = selection.chosen.series_instance_uid
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = load_processor(settings.pipeline.processor, pipeline_options(settings))
    request = ProcessRequest(
        job_id=0,
        files=tuple(paths[chosen]),
        out_dir=out_dir,
        uid_root=generate_uid(prefix=None),
        options={"repair_uids": True},
    )
    outcome = processor.process(request)
    summary: dict[str, Any] = {
        **dict(outcome.summary),
        "input_dir": str(input_dir),
        "series_choice": selection.chosen.reason,
        "skipped_series": skipped,
        "objects": [
            {
                "kind": o.kind,
                "path": str(o.path),
                "sop_class_uid": o.sop_class_uid,
                "sop_instance_uid": o.sop_instance_uid,
                "series_instance_uid": o.series_instance_uid,
            }
            for o in outcome.objects
        ],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
