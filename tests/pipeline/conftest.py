"""Fixtures of the pipeline-core tests: a synthetic chest phantom, synthetic DICOM series,
the real COVID-CT-MD studies read once per session, and the dciodvfy conformance gate.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset

from pipeline.series import ct_headers, read_series, volume_from_array
from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
from pipeline.stats import lung_stats
from pipeline.types import Classification, CTVolume, Lesion, LungMask, ModelInfo, StudyResult

COVID_DIR = ("covid-ct-md", "series", "COVID-19", "P002")
CAP_DIR = ("covid-ct-md", "series", "CAP", "cap002")
TOTALSEG_DIR = ("totalsegmentator-testdata", "example_ct_dicom")

# Synthetic phantom (all in mm, LPS): a small adult chest.
AIR_HU = -1000.0
TISSUE_HU = 40.0
LUNG_HU = -850.0
TABLE_HU = 300.0
NOISE_HU = 20.0
BODY_SEMI_AXES_MM = (95.0, 70.0)  # x (left-right), y (anterior-posterior)
LUNG_CENTRE_X_MM = 42.0  # each lung's centre is this far from the midline
LUNG_SEMI_AXES_MM = (30.0, 45.0, 70.0)  # x, y, z
TRACHEA_RADIUS_MM = 8.0
TRACHEA_Y_MM = -15.0  # anterior of the lungs' centre
VESSEL_RADIUS_MM = 3.0


def dsrdump_text(path: Path) -> str:
    """dcmtk's rendering of an SR; fails when dsrdump is missing or refuses the document."""
    exe = shutil.which("dsrdump")
    if exe is None:
        pytest.fail("dsrdump not found: install the Debian package dcmtk", pytrace=False)
    proc = subprocess.run([exe, "-Ec", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"dsrdump failed on {path}: {proc.stderr}", pytrace=False)
    return proc.stdout


@dataclass(frozen=True)
class Phantom:
    """A synthetic chest CT and the true masks it was drawn from."""

    volume: CTVolume
    left: npt.NDArray[np.bool_]
    right: npt.NDArray[np.bool_]
    trachea: npt.NDArray[np.bool_]  # the tube above the carina
    bronchi: npt.NDArray[np.bool_]  # carina and main bronchi (they touch the lungs in-plane)
    bridge: npt.NDArray[np.bool_]


def make_phantom(
    shape: tuple[int, int, int] = (36, 256, 256),
    spacing: tuple[float, float, float] = (5.0, 0.75, 0.75),
    direction: npt.NDArray[np.float64] | None = None,
    joined: bool = False,
    seed: int = 7,
) -> Phantom:
    """Body, two lungs with vessels, trachea with bronchi, table; drawn in LPS millimetres.

    With ``joined`` an air bridge connects the lungs anteriorly (the anterior junction that
    makes real lungs one component). Any ``direction`` works since anatomy is placed by
    patient coordinates, so patient-left is always at LPS +x.
    """
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    nz, ny, nx = shape
    # Centre the grid on the patient origin.
    half = np.array([(nx - 1) * spacing[2], (ny - 1) * spacing[1], (nz - 1) * spacing[0]]) / 2
    origin = -(matrix @ half)
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    steps = np.stack([xx * spacing[2], yy * spacing[1], zz * spacing[0]], axis=-1)
    lps = origin + steps @ matrix.T
    x, y, z = lps[..., 0], lps[..., 1], lps[..., 2]

    body = (x / BODY_SEMI_AXES_MM[0]) ** 2 + (y / BODY_SEMI_AXES_MM[1]) ** 2 <= 1.0
    table = (y > BODY_SEMI_AXES_MM[1] + 8.0) & (y < BODY_SEMI_AXES_MM[1] + 20.0)
    ax, ay, az = LUNG_SEMI_AXES_MM
    lung_top_z = az

    def ellipsoid(cx: float) -> npt.NDArray[np.bool_]:
        return ((x - cx) / ax) ** 2 + (y / ay) ** 2 + (z / az) ** 2 <= 1.0

    left = ellipsoid(+LUNG_CENTRE_X_MM)  # patient left is LPS +x
    right = ellipsoid(-LUNG_CENTRE_X_MM)
    carina_z = 0.35 * lung_top_z
    bronchus_half_height_mm = 6.0
    tube = (x**2 + (y - TRACHEA_Y_MM) ** 2 <= TRACHEA_RADIUS_MM**2) & (z >= carina_z) & body
    bronchi = (
        (np.abs(z - carina_z) <= bronchus_half_height_mm)
        & (np.abs(y - TRACHEA_Y_MM) <= 5.0)
        & (np.abs(x) <= LUNG_CENTRE_X_MM - ax + 6.0)
    )
    near_carina = np.abs(z - carina_z) <= bronchus_half_height_mm + spacing[0]
    trachea = tube & ~near_carina & ~left & ~right
    bronchi = ((bronchi & body) | (tube & near_carina)) & ~left & ~right
    bridge = np.zeros(shape, dtype=bool)
    if joined:
        bridge = (
            (np.abs(x) <= LUNG_CENTRE_X_MM)
            & (np.abs(y + 0.75 * ay) <= 3.0)
            & (np.abs(z) <= 0.4 * az)
            & ~left & ~right
        )
    vessels = np.zeros(shape, dtype=bool)
    for cx in (+LUNG_CENTRE_X_MM, -LUNG_CENTRE_X_MM):
        for dx, dy in ((-8.0, -10.0), (6.0, 12.0)):
            vessels |= ((x - cx - dx) ** 2 + (y - dy) ** 2 <= VESSEL_RADIUS_MM**2)
    vessels &= left | right

    rng = np.random.default_rng(seed)
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    hu[table] = TABLE_HU
    hu[body] = TISSUE_HU
    hu[left | right | bridge] = LUNG_HU
    hu[trachea | bronchi] = AIR_HU
    hu[vessels] = TISSUE_HU
    hu += rng.normal(0.0, NOISE_HU, size=shape).astype(np.float32)
    volume = volume_from_array(
        hu, spacing, [float(v) for v in origin], matrix, uid_root=f"phantom-{seed}"
    )
    return Phantom(
        volume=volume, left=left, right=right, trachea=trachea, bronchi=bronchi, bridge=bridge
    )


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def slice_datasets(
    hu: npt.NDArray[np.float32],
    spacing: tuple[float, float, float] = (2.0, 0.8, 0.8),
    *,
    uid_root: str = "series-test",
    intercept: float = -1024.0,
    direction: npt.NDArray[np.float64] | None = None,
) -> list[Dataset]:
    """Single-frame CT datasets with Pixel Data (unsigned, RescaleIntercept) for ``hu``."""
    headers = ct_headers(hu.shape, spacing, (0.0, 0.0, 0.0), direction, uid_root=uid_root)  # type: ignore[arg-type]
    datasets = []
    for index, ds in enumerate(headers):
        stored = np.round(hu[index] - intercept).astype(np.uint16)
        ds.PixelRepresentation = 0
        ds.BitsStored = 16
        ds.RescaleIntercept = intercept
        ds.PixelData = stored.tobytes()
        datasets.append(ds)
    return datasets


def write_datasets(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write datasets as files named by InstanceNumber (in reverse order, to test sorting)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in reversed(list(datasets)):
        path = folder / f"IM{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def chest_phantom() -> Phantom:
    return make_phantom()


@pytest.fixture(scope="session")
def chest_phantom_lungs(chest_phantom: Phantom) -> LungMask:
    return MorphologicalLungSegmenter().segment(chest_phantom.volume)


def _case_files(shared_data: Path, parts: tuple[str, ...]) -> list[Path]:
    folder = shared_data.joinpath(*parts)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not files:
        pytest.fail(f"missing shared data folder {folder}", pytrace=False)
    return files


@pytest.fixture(scope="session")
def covid_files(shared_data: Path) -> list[Path]:
    return _case_files(shared_data, COVID_DIR)


@pytest.fixture(scope="session")
def cap_files(shared_data: Path) -> list[Path]:
    return _case_files(shared_data, CAP_DIR)


@pytest.fixture(scope="session")
def totalseg_files(shared_data: Path) -> list[Path]:
    return _case_files(shared_data, TOTALSEG_DIR)


@pytest.fixture(scope="session")
def covid_volume(covid_files: list[Path]) -> CTVolume:
    """P002 read once per session, UIDs repaired (the files have empty/UUID UIDs)."""
    return read_series(covid_files, repair_uids=True)


@pytest.fixture(scope="session")
def cap_volume(cap_files: list[Path]) -> CTVolume:
    return read_series(cap_files, repair_uids=True)


@pytest.fixture(scope="session")
def covid_lungs(covid_volume: CTVolume) -> LungMask:
    return MorphologicalLungSegmenter().segment(covid_volume)


def read_header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


CLASSIFIER_INFO = ModelInfo("test-classifier", "0.0.1", "a" * 64)
LOCALIZER_INFO = ModelInfo("test-localizer", "0.0.1", "b" * 64)
LESION_RADIUS_MM = 12.0


def sphere_lesion(
    volume: CTVolume, lungs: LungMask, number: int, centre_lps: Sequence[float], radius_mm: float
) -> Lesion:
    """A spherical lesion (clipped to the lungs) with its measurements, as a localizer gives."""
    # Index of the centre: solve origin + direction @ (x*dx, y*dy, z*dz) = centre.
    steps = np.linalg.solve(volume.direction, np.asarray(centre_lps) - volume.origin_lps)
    dz, dy, dx = volume.spacing_mm
    centre_zyx = np.array([steps[2] / dz, steps[1] / dy, steps[0] / dx])
    reach = np.ceil(radius_mm / np.array([dz, dy, dx])).astype(int) + 1
    low = np.maximum(np.floor(centre_zyx).astype(int) - reach, 0)
    high = np.minimum(np.ceil(centre_zyx).astype(int) + reach + 1, volume.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    zyx = np.argwhere(np.ones(high - low, dtype=bool)) + low
    distance = np.linalg.norm(volume.index_to_lps(zyx) - np.asarray(centre_lps), axis=1)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[box] = (distance <= radius_mm).reshape(tuple(high - low))
    mask &= lungs.both
    left, right = int((mask & lungs.left).sum()), int((mask & lungs.right).sum())
    side = "bilateral" if left and right else ("left" if left else "right")
    centroid = volume.index_to_lps(np.argwhere(mask).mean(axis=0))[0]
    return Lesion(
        number=number,
        mask=mask,
        volume_ml=float(mask.sum() * volume.voxel_volume_ml),
        centroid_lps=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
        side=side,
        mean_hu=float(volume.hu[mask].mean()),
        peak_activation=0.9,
        largest_slice=int(np.argmax(mask.sum(axis=(1, 2)))),
    )


def make_result(
    volume: CTVolume,
    lungs: LungMask,
    *,
    lesions: Sequence[Lesion] | None = None,
    classification: bool = True,
) -> StudyResult:
    """A StudyResult as the runner would build it from these stage outputs."""
    algorithms = [MorphologicalLungSegmenter().info]
    result_classification = None
    if classification:
        result_classification = Classification(
            label="covid19",
            probabilities={"non-covid": 0.25, "covid19": 0.75},
            p_covid=0.75,
            embedding=np.zeros(32, dtype=np.float32),
            model=CLASSIFIER_INFO,
        )
        algorithms.append(CLASSIFIER_INFO)
    if lesions is not None:
        algorithms.append(LOCALIZER_INFO)
    return StudyResult(
        volume=volume,
        lungs=lungs,
        lung_stats=lung_stats(volume, lungs, lesions),
        classification=result_classification,
        lesions=tuple(lesions or ()),
        timings_s={},
        algorithms=tuple(algorithms),
    )


@pytest.fixture(scope="session")
def phantom_result(chest_phantom: Phantom, chest_phantom_lungs: LungMask) -> StudyResult:
    """Phantom lungs, one lesion per lung and a classification."""
    volume = chest_phantom.volume
    lesions = [
        sphere_lesion(volume, chest_phantom_lungs, 1, (42.0, 10.0, -20.0), LESION_RADIUS_MM),
        sphere_lesion(volume, chest_phantom_lungs, 2, (-42.0, -10.0, 25.0), 9.0),
    ]
    return make_result(volume, chest_phantom_lungs, lesions=lesions)
