"""Test studies built from the real COVID-CT-MD files in ``../shared/data``.

The published files cannot go on the wire as they are (bare-UUID Study/Series UIDs, empty
SOPInstanceUID and FrameOfReferenceUID, no MediaStorageSOPInstanceUID). :func:`rewrite_uids`
gives them valid, deterministic UIDs and leaves the JPEG Lossless pixel data bytes untouched;
:func:`recompress` writes lossless copies in other transfer syntaxes and proves the pixels
round-trip; :func:`make_large_series` builds a longer series for the ingest benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from dicomnode.tools.uidfix import (  # noqa: F401 - re-exported for the fixtures' users
    REFERENCE_SEQUENCES,
    UID_PART_SEPARATOR,
    derived_uid,
    frame_of_reference_uid,
    hashed_uid,
    instance_uid,
    is_valid_uid,
    lenient_reading,
    set_identity,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
COVID_CT_MD_DIR = SHARED_DATA_DIR / "covid-ct-md"
COVID_SERIES_DIR = COVID_CT_MD_DIR / "series" / "COVID-19" / "P002"
CAP_SERIES_DIR = COVID_CT_MD_DIR / "series" / "CAP" / "cap002"

LARGE_SERIES_SLICES = 300

ENCODED_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {JPEGLSLossless, JPEG2000Lossless, RLELossless}
)
NATIVE_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
RECOMPRESS_TARGETS = ENCODED_TRANSFER_SYNTAXES | NATIVE_TRANSFER_SYNTAXES



class StudyPreparationError(RuntimeError):
    """A test study could not be rewritten or recompressed faithfully."""


def read_dataset(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file, tolerating the invalid UIDs of the published files.

    Every element is converted while reading, so later access raises no validation warnings.
    """
    with lenient_reading():
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        for _ in ds.iterall():
            pass
        return ds


def series_files(src_dir: Path) -> list[Path]:
    """Every file under ``src_dir`` (recursively), sorted by path."""
    if not src_dir.is_dir():
        raise FileNotFoundError(f"not a folder: {src_dir}")
    return sorted(p for p in src_dir.rglob("*") if p.is_file() and p.name != "DICOMDIR")


def uid_problems(ds: Dataset) -> list[str]:
    """Human-readable UID defects that keep ``ds`` from being stored (empty = none)."""
    with lenient_reading():
        return _uid_problems(ds)


def _uid_problems(ds: Dataset) -> list[str]:
    problems = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = ds.get(keyword, "")
        if not is_valid_uid(str(value)):
            problems.append(f"{keyword} {str(value)!r} is not a valid UID")
    if "FrameOfReferenceUID" in ds and not is_valid_uid(str(ds.FrameOfReferenceUID)):
        problems.append(f"FrameOfReferenceUID {str(ds.FrameOfReferenceUID)!r} is not a valid UID")
    meta = getattr(ds, "file_meta", None)
    media_uid = str(meta.get("MediaStorageSOPInstanceUID", "")) if meta is not None else ""
    if media_uid != str(ds.get("SOPInstanceUID", "")) or not media_uid:
        problems.append(f"MediaStorageSOPInstanceUID {media_uid!r} does not match SOPInstanceUID")
    return problems


def _instance_number(ds: Dataset, path: Path) -> int:
    value = ds.get("InstanceNumber")
    if value is None or str(value).strip() == "":
        raise StudyPreparationError(f"{path}: no InstanceNumber to derive a SOPInstanceUID from")
    return int(value)


def rewrite_uids(src_dir: Path, dst_dir: Path, salt: str = "") -> list[Path]:
    """Copy the files of ``src_dir`` to ``dst_dir`` with valid, deterministic UIDs.

    Study and series UIDs: see :func:`derived_uid`; SOPInstanceUID from the new series UID and
    InstanceNumber (an existing valid one is kept when ``salt`` is empty); one
    FrameOfReferenceUID per series; the file meta fixed. Transfer syntax and pixel data bytes
    are written unchanged. A new ``salt`` gives a new set of UIDs (Orthanc ignores instances
    it already has). Returns the written paths, in source order.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    seen: dict[str, Path] = {}
    for path in series_files(src_dir):
        ds = read_dataset(path)
        study_uid = derived_uid(str(ds.get("StudyInstanceUID", "")), salt, "study")
        series_uid = derived_uid(str(ds.get("SeriesInstanceUID", "")), salt, "series")
        old_sop = str(ds.get("SOPInstanceUID", ""))
        if not salt and is_valid_uid(old_sop):
            sop_uid = old_sop
        else:
            sop_uid = instance_uid(series_uid, _instance_number(ds, path))
        if sop_uid in seen:
            raise StudyPreparationError(
                f"{path} and {seen[sop_uid]} would share SOPInstanceUID {sop_uid} "
                "(duplicate InstanceNumber in one series?)"
            )
        seen[sop_uid] = path
        old_for = str(ds.get("FrameOfReferenceUID", ""))
        for_uid = old_for if not salt and is_valid_uid(old_for) else frame_of_reference_uid(
            series_uid
        )
        set_identity(ds, study_uid, series_uid, sop_uid, for_uid)
        out = dst_dir / path.relative_to(src_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)
        written.append(out)
    if not written:
        raise StudyPreparationError(f"no files in {src_dir}")
    logger.debug("rewrote %d files from %s into %s", len(written), src_dir, dst_dir)
    return written


@dataclass(frozen=True)
class PreparedSeries:
    """A series written by :func:`prepare_series`: its folder, files and identifying UIDs."""

    directory: Path
    files: tuple[Path, ...]
    study_instance_uid: str
    series_instance_uid: str

    def __len__(self) -> int:
        return len(self.files)


def prepare_series(src_dir: Path, dst_dir: Path, salt: str = "") -> PreparedSeries:
    """:func:`rewrite_uids` one series and describe the result (one study, one series)."""
    files = rewrite_uids(src_dir, dst_dir, salt)
    study_uids, series_uids = set(), set()
    for path in files:
        ds = read_dataset(path, stop_before_pixels=True)
        study_uids.add(str(ds.StudyInstanceUID))
        series_uids.add(str(ds.SeriesInstanceUID))
    if len(study_uids) != 1 or len(series_uids) != 1:
        raise StudyPreparationError(
            f"{src_dir} holds {len(study_uids)} studies and {len(series_uids)} series, "
            "expected one of each"
        )
    return PreparedSeries(dst_dir, tuple(files), study_uids.pop(), series_uids.pop())


def _decoded_pixels(path: Path) -> np.ndarray:
    return read_dataset(path).pixel_array


def recompress(paths: Iterable[Path], dst_dir: Path, transfer_syntax: str) -> list[Path]:
    """Write lossless copies of ``paths`` in ``transfer_syntax`` to ``dst_dir``.

    Targets: JPEG-LS lossless, JPEG 2000 lossless, RLE, deflated / explicit / implicit VR
    little endian. UIDs are kept (a lossless transcode is the same instance). Every written
    file is decoded again and must equal the source pixels exactly, else
    :class:`StudyPreparationError`.
    """
    target = UID(transfer_syntax)
    if target not in RECOMPRESS_TARGETS:
        raise ValueError(
            f"unsupported target transfer syntax {transfer_syntax}; use one of "
            f"{sorted(RECOMPRESS_TARGETS)}"
        )
    dst_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        path = Path(path)
        ds = read_dataset(path)
        pixels = ds.pixel_array
        if target in ENCODED_TRANSFER_SYNTAXES:
            ds.compress(target, arr=pixels, generate_instance_uid=False)
        else:
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress(generate_instance_uid=False)
            ds.file_meta.TransferSyntaxUID = target
        out = dst_dir / path.name
        ds.save_as(out, enforce_file_format=True)
        again = _decoded_pixels(out)
        if again.shape != pixels.shape or not np.array_equal(again, pixels):
            raise StudyPreparationError(
                f"{out}: pixels differ from {path} after recompression to {target.name}"
            )
        written.append(out)
    return written


def _z_of(ds: Dataset) -> float:
    return float(ds.ImagePositionPatient[2])


def make_large_series(
    src: Path, dst: Path, n: int = LARGE_SERIES_SLICES, *, salt: str = ""
) -> list[Path]:
    """Build an ``n``-slice series in ``dst`` from the slices of the series in ``src``.

    Slices are reused back and forth (1, 2, ..., m, m-1, ...) so neighbours stay similar, and
    placed at the source's slice spacing going caudally from the most cranial slice, with new
    study, series, frame-of-reference and instance UIDs (deterministic for ``src``, ``n``,
    ``salt``). Pixel data bytes and transfer syntax are copied unchanged.
    """
    if n < 2:
        raise ValueError("n must be at least 2")
    headers = [(read_dataset(p, stop_before_pixels=True), p) for p in series_files(src)]
    if len(headers) < 2:
        raise StudyPreparationError(f"{src}: need at least two slices, found {len(headers)}")
    headers.sort(key=lambda item: _z_of(item[0]), reverse=True)
    z_values = np.array([_z_of(h) for h, _ in headers])
    spacing_mm = float(np.median(np.abs(np.diff(z_values))))
    if spacing_mm <= 0:
        raise StudyPreparationError(f"{src}: slices share one position")
    first = headers[0][0]
    origin_study = str(first.get("StudyInstanceUID", ""))
    study_uid = hashed_uid("large-series-study", origin_study, str(n), salt)
    series_uid = hashed_uid("large-series", study_uid)
    for_uid = frame_of_reference_uid(series_uid)
    top_z = float(z_values[0])
    period = 2 * (len(headers) - 1)
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(n):
        phase = k % period
        index = phase if phase < len(headers) else period - phase
        ds = read_dataset(headers[index][1])
        number = k + 1
        set_identity(ds, study_uid, series_uid, instance_uid(series_uid, number), for_uid)
        z = top_z - k * spacing_mm
        x, y = (float(v) for v in ds.ImagePositionPatient[:2])
        ds.ImagePositionPatient = [x, y, round(z, 4)]
        ds.SliceLocation = round(z, 4)
        ds.InstanceNumber = number
        ds.SeriesNumber = 1
        ds.SeriesDescription = f"synthetic {n}-slice series"
        out = dst / f"IM{number:04d}.dcm"
        ds.save_as(out, enforce_file_format=True)
        written.append(out)
    return written
