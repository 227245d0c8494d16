"""``python -m training export-verdicts``: the node's reviewed studies as a training set.

For the latest verdict of every reviewed job: the analysed series, de-identified with dicognito
(names, IDs and UIDs replaced consistently per study, then every date and time emptied and
private elements removed), the label the verdict implies (the primary's answer when the reader
agreed, the other class when not) and a lesion mask of the accepted findings (their segments of
the AI SEG, (z, y, x) uint8 in the slice order ``pipeline.series.read_series`` gives).

Layout (the "generic" layout of ``training.datasets.public.read_labelled_folder``)::

    OUT/labels.csv             path,label,mask,accepted_lesions
    OUT/images/case-0001/*.dcm
    OUT/masks/case-0001.npy

The node's database is read with plain SQL (``training`` never imports the node): the
configuration file gives ``[node] data_dir`` and ``database_url`` as ``dicomnode`` reads them.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset, dcmread

from training.datasets.public import COVID_LABEL, NON_COVID_LABEL

logger = logging.getLogger(__name__)

POSITIVE_LABELS = frozenset({"covid19", "covid", "covid-19"})
DATE_TIME_VRS = frozenset({"DA", "DT", "TM"})
LATEST_VERDICTS = """
SELECT v.job_id, v.classification, v.findings, v.models, j.series_id
FROM verdicts v JOIN jobs j ON j.id = v.job_id
WHERE v.id IN (SELECT max(id) FROM verdicts GROUP BY job_id)
ORDER BY v.job_id
"""


@dataclass(frozen=True)
class NodePaths:
    data_dir: Path
    database_url: str


@dataclass(frozen=True)
class ReviewedCase:
    job_id: int
    label: str
    accepted_lesions: tuple[int, ...]
    files: tuple[Path, ...]
    seg: Path | None


def node_paths(config: Path | None) -> NodePaths:
    """``[node] data_dir`` and ``database_url`` from the node's TOML file and environment."""
    raw: dict[str, Any] = {}
    if config is not None:
        raw = tomllib.loads(Path(config).read_text(encoding="utf-8")).get("node", {})
    data_dir = Path(os.environ.get("DICOMNODE_NODE_DATA_DIR", raw.get("data_dir", "./data")))
    url = os.environ.get("DICOMNODE_NODE_DATABASE_URL", raw.get("database_url", ""))
    return NodePaths(data_dir, url or f"sqlite:///{(data_dir / 'dicomnode.sqlite').resolve()}")


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def verdict_label(primary_label: str, classification: str) -> str:
    positive = primary_label.strip().lower() in POSITIVE_LABELS
    truth = positive == (classification == "agree")
    return COVID_LABEL if truth else NON_COVID_LABEL


def reviewed_cases(paths: NodePaths) -> Iterator[ReviewedCase]:
    from sqlalchemy import create_engine, text

    engine = create_engine(paths.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(LATEST_VERDICTS)).all()
            for job_id, classification, findings, models, series_id in rows:
                primary = (_json(models) or {}).get("primary")
                if not primary:
                    logger.warning("job %d: verdict without a classification; skipped", job_id)
                    continue
                files = conn.execute(text("SELECT path FROM instances WHERE series_id = :s"),
                                     {"s": series_id}).scalars().all()
                seg = conn.execute(text("SELECT path FROM result_objects WHERE job_id = :j "
                                        "AND kind = 'SEG' ORDER BY id LIMIT 1"),
                                   {"j": job_id}).scalar()
                accepted = sorted(int(k) for k, v in (_json(findings) or {}).items()
                                  if v == "accept")
                yield ReviewedCase(
                    job_id, verdict_label(str(primary.get("label", "")), classification),
                    tuple(accepted), tuple(paths.data_dir / f for f in files),
                    paths.data_dir / seg if seg else None)
    finally:
        engine.dispose()


def lesion_mask(case: ReviewedCase) -> npt.NDArray[np.uint8]:
    """The accepted lesions' segments of the AI SEG, in the series' read order (z, y, x)."""
    import highdicom as hd

    from pipeline.series import read_series

    volume = read_series(list(case.files))
    shape = volume.shape
    mask = np.zeros(shape, dtype=np.uint8)
    if case.seg is None or not case.accepted_lesions:
        return mask
    seg = hd.seg.segread(case.seg)
    numbers = {int(item.SegmentNumber) for item in seg.SegmentSequence
               if str(item.SegmentLabel).startswith("Lesion ")
               and str(item.SegmentLabel)[7:].isdigit()
               and int(str(item.SegmentLabel)[7:]) in case.accepted_lesions}
    if not numbers:
        return mask
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=sorted(numbers),
        assert_missing_frames_are_empty=True)
    return np.asarray(pixels.any(axis=-1), dtype=np.uint8).reshape(shape)


def deidentify(datasets: Sequence[Dataset]) -> None:
    """Replace identifiers with dicognito (one anonymizer per study: consistent UIDs), then
    empty every date and time and drop private elements."""
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()
    for ds in datasets:
        anonymizer.anonymize(ds)
        ds.remove_private_tags()
        for elem in ds.iterall():
            if elem.VR in DATE_TIME_VRS:
                elem.value = ""


def export_case(case: ReviewedCase, out: Path, name: str) -> dict[str, str]:
    mask = lesion_mask(case)
    datasets = [dcmread(path) for path in case.files]
    deidentify(datasets)
    folder = out / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    for index, ds in enumerate(datasets, start=1):
        ds.save_as(folder / f"{index:05d}.dcm", enforce_file_format=True)
    (out / "masks").mkdir(exist_ok=True)
    np.save(out / "masks" / f"{name}.npy", mask)
    return {"path": f"images/{name}", "label": case.label, "mask": f"masks/{name}.npy",
            "accepted_lesions": " ".join(map(str, case.accepted_lesions))}


def export_verdicts(config: Path | None, out: Path) -> int:
    """Write every reviewed study under ``out``; the number of cases written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(reviewed_cases(node_paths(config)), start=1):
        rows.append(export_case(case, out, f"case-{index:04d}"))
        logger.info("job %d exported as case %d (%s)", case.job_id, index, case.label)
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "mask", "accepted_lesions"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
