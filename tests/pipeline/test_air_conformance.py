"""AIR conformance of every kind of result object: PixelMed's validators (Debian
``pixelmed-apps``, as IHE Connectathons run them for AI Results) print no ``Error`` line.

The objects are those of the session's chest phantom with two lesions and a classification
(``phantom_result``), written once for this module: SEG, main SR, viewer SR, an overlay slice
and the summary, plus a main SR that holds only a classification (no SEG). ``DicomSRValidator``
checks an SR's IOD and templates; the other objects get ``DicomInstanceValidator``. Each run
starts a JVM that compiles PixelMed's style sheets (about 10 s of CPU), so each object is
checked once, two at a time. Missing java or pixelmed.jar fails the test.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.types import StudyResult
from pipeline.writers.overlay import write_overlay
from pipeline.writers.seg import write_seg
from pipeline.writers.sr import write_sr
from pipeline.writers.viewer_sr import write_viewer_sr
from tests.peers.pixelmed import INSTANCE_VALIDATOR, SR_VALIDATOR, pixelmed_errors

pytestmark = pytest.mark.slow

UID_ROOT = "2.25.5151"
OVERLAY_EVERY_NTH_SLICE = 1000  # the first lung slice and each lesion's largest slice
VALIDATION_TIMEOUT_S = 1200  # generous: the validators are CPU-bound and CI machines are shared


@pytest.fixture(scope="module")
def objects(
    phantom_result: StudyResult, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[Path, str]]:
    """(file, validator) for each kind of object written from the phantom result."""
    folder = tmp_path_factory.mktemp("air")
    seg, plans = write_seg(phantom_result, folder / "seg.dcm", UID_ROOT)
    write_sr(phantom_result, seg, plans, folder / "sr.dcm", UID_ROOT)
    viewer = write_viewer_sr(phantom_result, plans, folder / "sr-viewer.dcm", UID_ROOT)
    assert viewer is not None
    write_sr(phantom_result, None, (), folder / "sr-classification.dcm", UID_ROOT)
    overlay = write_overlay(
        phantom_result, folder, UID_ROOT, every_nth_slice=OVERLAY_EVERY_NTH_SLICE
    )
    return [
        (folder / "seg.dcm", INSTANCE_VALIDATOR),
        (overlay[0].path, INSTANCE_VALIDATOR),
        (overlay[-1].path, INSTANCE_VALIDATOR),
        (folder / "sr.dcm", SR_VALIDATOR),
        (folder / "sr-viewer.dcm", SR_VALIDATOR),
        (folder / "sr-classification.dcm", SR_VALIDATOR),
    ]


@pytest.mark.timeout(VALIDATION_TIMEOUT_S)
def test_every_object_kind_passes_the_pixelmed_validators(
    objects: list[tuple[Path, str]],
) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda check: pixelmed_errors(*check), objects))
    failures = {
        f"{path.name} {validator.rsplit('.', 1)[-1]}": errors
        for (path, validator), errors in zip(objects, reports, strict=True) if errors
    }
    assert failures == {}
