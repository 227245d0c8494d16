"""Readers for public chest CT datasets laid out the way their publishers ship them.

- MosMedData: ``studies/CT-0`` .. ``studies/CT-4`` folders of NIfTI volumes (CT-0 = no
  findings, CT-1..CT-4 = COVID-19 of increasing severity), optionally a CSV of labels.
- COV19-CT-DB (MIA-COV19D): ``<split>/covid`` and ``<split>/non-covid`` folders of per-scan
  folders holding JPG/PNG slices (named by slice number) or DICOM files.
- Generic: a folder of DICOM series (one folder each) or NIfTI files plus a labels CSV with
  columns ``path`` (relative to the root) and ``label``.

Each reader returns ``ScanRecord``s; :func:`load_scan` turns a record into a (z, y, x) array.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

COVID_LABEL = "covid19"
NON_COVID_LABEL = "non-covid"
MOSMED_CATEGORY_RE = re.compile(r"^CT-([0-4])$")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SLICE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
COVID_ALIASES = frozenset({"covid", "covid19", "covid-19", "1", "positive", "ct-1", "ct-2", "ct-3",
                           "ct-4"})
NON_COVID_ALIASES = frozenset({"non-covid", "noncovid", "non_covid", "normal", "0", "negative",
                               "ct-0", "cap", "healthy"})


class DatasetLayoutError(ValueError):
    """The folder does not have the layout the reader expects."""


@dataclass(frozen=True)
class ScanRecord:
    """One scan of a public dataset: where it is, its format and its label."""

    path: Path
    label: str  # COVID_LABEL or NON_COVID_LABEL
    source: str  # "mosmeddata", "cov19-ct-db" or "generic"
    fmt: str  # "nifti", "dicom" or "slices"
    category: str = ""  # dataset-specific class, e.g. "CT-2" or "covid"


@dataclass(frozen=True)
class LoadedScan:
    """Pixel data of a scan, (z, y, x). ``is_hu`` False means 8-bit display values (JPG/PNG)."""

    array: npt.NDArray[np.float32]
    spacing_mm: tuple[float, float, float] | None
    is_hu: bool


def normalise_label(raw: str) -> str:
    """Map the datasets' many spellings of the two classes onto COVID_LABEL / NON_COVID_LABEL."""
    key = raw.strip().lower()
    if key in COVID_ALIASES:
        return COVID_LABEL
    if key in NON_COVID_ALIASES:
        return NON_COVID_LABEL
    raise ValueError(f"unknown label {raw!r}")


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def read_mosmeddata(root: Path | str) -> list[ScanRecord]:
    """List the NIfTI studies of a MosMedData tree (``root/studies/CT-k`` or ``root/CT-k``)."""
    base = Path(root)
    studies = base / "studies" if (base / "studies").is_dir() else base
    records: list[ScanRecord] = []
    for folder in sorted(p for p in studies.iterdir() if p.is_dir()):
        match = MOSMED_CATEGORY_RE.match(folder.name)
        if match is None:
            continue
        label = COVID_LABEL if match.group(1) != "0" else NON_COVID_LABEL
        for f in sorted(folder.iterdir()):
            if _is_nifti(f):
                records.append(ScanRecord(f, label, "mosmeddata", "nifti", folder.name))
    if not records:
        raise DatasetLayoutError(f"no CT-0..CT-4 folders of NIfTI files under {studies}")
    return records


def read_cov19_ct_db(root: Path | str) -> list[ScanRecord]:
    """List the scans of a COV19-CT-DB split folder (``covid`` / ``non-covid`` class folders).

    ``root`` may be a split folder (holding the class folders) or the dataset root holding
    split folders; every split found is listed.
    """
    base = Path(root)
    splits = [base] if _class_folders(base) else [p for p in sorted(base.iterdir())
                                                  if p.is_dir() and _class_folders(p)]
    records: list[ScanRecord] = []
    for split in splits:
        for class_dir, label in _class_folders(split):
            for scan in sorted(p for p in class_dir.iterdir() if p.is_dir()):
                fmt = _scan_folder_format(scan)
                if fmt is None:
                    logger.warning("skipping %s: no slice images or DICOM files", scan)
                    continue
                records.append(ScanRecord(scan, label, "cov19-ct-db", fmt, class_dir.name))
    if not records:
        raise DatasetLayoutError(f"no covid/non-covid scan folders under {base}")
    return records


def _class_folders(folder: Path) -> list[tuple[Path, str]]:
    found = []
    for name, label in (("covid", COVID_LABEL), ("non-covid", NON_COVID_LABEL)):
        if (folder / name).is_dir():
            found.append((folder / name, label))
    return found


def _scan_folder_format(folder: Path) -> str | None:
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.suffix.lower() in SLICE_IMAGE_SUFFIXES for p in files):
        return "slices"
    if any(_looks_like_dicom(p) for p in files):
        return "dicom"
    return None


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_labelled_folder(root: Path | str, labels_csv: Path | str) -> list[ScanRecord]:
    """List scans named in a CSV (columns ``path``, ``label``); paths are relative to ``root``."""
    base = Path(root)
    records: list[ScanRecord] = []
    with Path(labels_csv).open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise DatasetLayoutError(f"{labels_csv}: need 'path' and 'label' columns")
        for row in reader:
            path = base / row["path"]
            if _is_nifti(path):
                fmt = "nifti"
            elif path.is_dir():
                fmt = _scan_folder_format(path) or ""
            else:
                fmt = ""
            if not fmt:
                raise DatasetLayoutError(f"{path}: not a NIfTI file or a folder of slices/DICOM")
            records.append(ScanRecord(path, normalise_label(row["label"]), "generic", fmt,
                                      row["label"]))
    return records


def load_scan(record: ScanRecord) -> LoadedScan:
    """Read the pixels of a scan as (z, y, x), z ascending cranially where the format says so."""
    if record.fmt == "nifti":
        return load_nifti(record.path)
    if record.fmt == "dicom":
        from pipeline.series import read_series

        volume = read_series(sorted(p for p in record.path.iterdir() if p.is_file()),
                             repair_uids=True)
        return LoadedScan(volume.hu, volume.spacing_mm, True)
    if record.fmt == "slices":
        return load_slice_images(record.path)
    raise ValueError(f"unknown scan format {record.fmt!r}")


def load_nifti(path: Path) -> LoadedScan:
    """Load a NIfTI CT as (z, y, x) HU in DICOM-like orientation (x to patient left, y posterior,
    z cranial), using the affine reoriented to RAS+ (nibabel is an optional dependency)."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(image.dataobj, dtype=np.float32)  # (x: R->L reversed, y: P->A, z: I->S)
    if data.ndim != 3:
        raise DatasetLayoutError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    zooms = image.header.get_zooms()[:3]
    # RAS+ -> LPS-like axes: flip x (R->L) and y (P->A becomes A->P), then order (z, y, x)
    arr = np.transpose(data[::-1, ::-1, :], (2, 1, 0))
    return LoadedScan(np.ascontiguousarray(arr), (float(zooms[2]), float(zooms[1]),
                                                  float(zooms[0])), True)


def load_slice_images(folder: Path) -> LoadedScan:
    """Stack the JPG/PNG slices of a scan folder in numeric file-name order (COV19-CT-DB)."""
    from PIL import Image

    files = [p for p in folder.iterdir() if p.suffix.lower() in SLICE_IMAGE_SUFFIXES]
    if not files:
        raise DatasetLayoutError(f"{folder}: no slice images")
    files.sort(key=_numeric_key)
    slices = [np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in files]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise DatasetLayoutError(f"{folder}: slices of different sizes {sorted(shapes)}")
    return LoadedScan(np.stack(slices), None, False)


def _numeric_key(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def iter_loaded(records: list[ScanRecord]) -> Iterator[tuple[ScanRecord, LoadedScan]]:
    """Load records one at a time, logging and skipping the unreadable ones."""
    for record in records:
        try:
            yield record, load_scan(record)
        except (OSError, ValueError, PipelineError) as exc:
            logger.warning("skipping %s: %s", record.path, exc)
