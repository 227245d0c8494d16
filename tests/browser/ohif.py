"""Page helpers for driving the OHIF viewer (3.13) and the node's pages in headless Chromium.

Every wait is bounded and polls what a reader would see: the pixels of the viewport (a clipped
page screenshot, so SVG annotations drawn over the canvas count too), the slice counter of the
viewport overlay, and the labels of OHIF's side panels. Selectors are OHIF's own ``data-cy``
attributes. The facts they rely on are recorded in ``shared/design/viewer.md``.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import numpy as np
import numpy.typing as npt
from PIL import Image
from playwright.sync_api import FloatRect, Locator, Page, ViewportSize

log = logging.getLogger(__name__)

T = TypeVar("T")

CHROMIUM_PATH = Path("/usr/bin/chromium")
# The flags that gave WebGL through SwiftShader and no outside traffic on these machines.
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
WINDOW_SIZE = ViewportSize(width=1280, height=800)
NEUTRAL_MOUSE_XY = (140, 760)  # blank study browser area: no hover card, no tooltip
# The onboarding tour would cover the viewport on a first visit.
SKIP_TOUR_SCRIPT = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"

POLL_INTERVAL_S = 0.25
FIRST_IMAGE_TIMEOUT_S = 60.0
PROMPT_TIMEOUT_S = 20.0
OVERLAY_TIMEOUT_S = 45.0
PANEL_TIMEOUT_S = 30.0
SLICE_TIMEOUT_S = 20.0

# Viewport pixels: a CT image is grey (R = G = B); segment fills and annotations are coloured.
BRIGHT_LEVEL_MIN = 60  # 0..255 luminance counted as "image, not background"
IMAGE_BRIGHT_SHARE_MIN = 0.05  # a drawn CT slice: far more of the viewport than this
COLOURED_SPREAD_MIN = 40  # max(R,G,B) - min(R,G,B) above which a pixel counts as coloured
# Strips of the viewport left out of pixel counts: the action bar at the top (coloured
# buttons), the slice scrollbar at the right.
VIEWPORT_TRIM_TOP_PX = 45
VIEWPORT_TRIM_RIGHT_PX = 30
VIEWPORT_TRIM_OTHER_PX = 8

SLICE_COUNTER = re.compile(r"\((\d+)\s*/\s*(\d+)\)")

VIEWPORT_CANVAS = "canvas.cornerstone-canvas"
NO_IMAGE_THUMBNAIL = '[data-cy="study-browser-thumbnail-no-image"]'
SEGMENTATION_TAB = '[data-cy="panelSegmentation-btn"]'
SEGMENTATION_SELECT = '[data-cy="segmentation-select"]'
MEASUREMENTS_TAB = '[data-cy="trackedMeasurements-btn"]'
MEASUREMENTS_PANEL = '[data-cy="trackedMeasurements-panel"]'
MEASUREMENT_ROW = '[data-cy^="measurement-table-row-"]'
ROW_TITLE = '[data-cy="data-row-title"]'
ALL_SEGMENTS_TOGGLE = '[data-cy="all-segments-visibility-toggle"]'
SLICE_OVERLAY = '[data-cy="viewport-overlay-bottom-right"]'

SEG_QUESTION = "Do you want to open this Segmentation?"
TRACKING_QUESTION = "Do you want to continue tracking measurements for this study?"


class ViewerTimeoutError(AssertionError):
    """The viewer did not reach the expected state within a bounded wait."""


def wait_until(predicate: Callable[[], T | None], timeout_s: float, what: str,
               interval_s: float = POLL_INTERVAL_S) -> T:
    """Poll ``predicate`` until it returns a truthy value (any pixel array counts as one);
    raise ViewerTimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if isinstance(value, np.ndarray) or value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise ViewerTimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


def viewer_url(base_url: str, study_uid: str) -> str:
    """OHIF's viewer route for one study (no credential in it: the session cookie opens it)."""
    return f"{base_url}/viewer?{urlencode({'StudyInstanceUIDs': study_uid})}"


def open_viewer(page: Page, base_url: str, study_uid: str) -> float:
    """Open the study in the viewer of a signed-in page and wait for a drawn image; seconds
    until it was drawn."""
    started = time.monotonic()
    page.goto(viewer_url(base_url, study_uid), wait_until="domcontentloaded")
    wait_for_image(page)
    return time.monotonic() - started


def viewport_pixels(page: Page) -> npt.NDArray[np.uint8]:
    """RGB pixels of the (first) viewport as shown, trimmed of its button and scrollbar strips."""
    box = page.locator(VIEWPORT_CANVAS).first.bounding_box(timeout=5000)
    if box is None:
        raise ViewerTimeoutError("the viewport canvas is not displayed")
    clip = FloatRect(
        x=box["x"] + VIEWPORT_TRIM_OTHER_PX,
        y=box["y"] + VIEWPORT_TRIM_TOP_PX,
        width=box["width"] - VIEWPORT_TRIM_OTHER_PX - VIEWPORT_TRIM_RIGHT_PX,
        height=box["height"] - VIEWPORT_TRIM_TOP_PX - VIEWPORT_TRIM_OTHER_PX,
    )
    if clip["width"] <= 0 or clip["height"] <= 0:
        raise ViewerTimeoutError(f"the viewport canvas is too small: {box}")
    png = page.screenshot(clip=clip)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def bright_share(rgb: npt.NDArray[np.uint8]) -> float:
    """Share of pixels brighter than the black background."""
    return float((rgb.max(axis=2) > BRIGHT_LEVEL_MIN).mean())


def coloured_share(rgb: npt.NDArray[np.uint8]) -> float:
    """Share of clearly coloured (not grey) pixels: segment fills, outlines, annotation text."""
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2).astype(np.int16)
    return float((spread > COLOURED_SPREAD_MIN).mean())


def wait_for_image(page: Page, timeout_s: float = FIRST_IMAGE_TIMEOUT_S,
                   min_bright_share: float = IMAGE_BRIGHT_SHARE_MIN) -> npt.NDArray[np.uint8]:
    """Wait for a non-blank viewport (network idle fires long before the first image)."""
    def drawn() -> npt.NDArray[np.uint8] | None:
        if page.locator(VIEWPORT_CANVAS).count() == 0:
            return None
        pixels = viewport_pixels(page)
        return pixels if bright_share(pixels) >= min_bright_share else None

    return wait_until(drawn, timeout_s, "a drawn image in the viewport")


def wait_for_pixels(page: Page, accept: Callable[[npt.NDArray[np.uint8]], bool], what: str,
                    timeout_s: float = OVERLAY_TIMEOUT_S) -> npt.NDArray[np.uint8]:
    """The viewport's drawn pixels once ``accept`` approves of them."""
    def check() -> npt.NDArray[np.uint8] | None:
        pixels = wait_for_image(page, timeout_s)
        return pixels if accept(pixels) else None

    return wait_until(check, timeout_s, what, interval_s=0.5)


def current_slice(page: Page) -> tuple[int, int] | None:
    """(index, count) from the viewport's "I: k (k/n)" overlay, 1-based; None when not shown."""
    overlay = page.locator(SLICE_OVERLAY).first
    if overlay.count() == 0:
        return None
    match = SLICE_COUNTER.search(overlay.inner_text())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _settled_slice(page: Page, timeout_s: float) -> tuple[int, int]:
    """The slice counter once two readings a moment apart agree (scrolling has finished)."""
    previous: list[tuple[int, int] | None] = [None]

    def settled() -> tuple[int, int] | None:
        shown = current_slice(page)
        agreed = shown if shown is not None and shown == previous[0] else None
        previous[0] = shown
        return agreed

    return wait_until(settled, timeout_s, "a steady slice counter", interval_s=0.4)


def go_to_slice(page: Page, index: int, timeout_s: float = SLICE_TIMEOUT_S) -> None:
    """Scroll the viewport (one wheel step per slice) until it shows slice ``index`` (1-based).
    Each round waits for the counter to settle, so slow rendering never makes it overshoot."""
    page.locator(VIEWPORT_CANVAS).first.hover()
    deadline = time.monotonic() + timeout_s
    while True:
        shown, count = _settled_slice(page, max(1.0, deadline - time.monotonic()))
        if not 1 <= index <= count:
            raise ValueError(f"slice {index} outside 1..{count}")
        if shown == index:
            return
        if time.monotonic() >= deadline:
            raise ViewerTimeoutError(f"slice {index} in the viewport: still {shown} after "
                                     f"{timeout_s:.0f} s")
        step = 100 if index > shown else -100
        for _ in range(abs(index - shown)):
            page.mouse.wheel(0, step)


def step_slice(page: Page, delta: int) -> None:
    """Scroll ``delta`` slices from the current one (negative: backwards)."""
    shown = wait_until(lambda: current_slice(page), SLICE_TIMEOUT_S, "the slice counter")
    go_to_slice(page, max(1, min(shown[1], shown[0] + delta)))


def series_thumbnail(page: Page, description: str) -> Locator:
    """The study browser's entry (a series without image thumbnail: SEG, SR) whose series
    description contains ``description``."""
    return page.locator(NO_IMAGE_THUMBNAIL).filter(has_text=description)


def open_series(page: Page, description: str, timeout_s: float = PANEL_TIMEOUT_S) -> None:
    """Double-click the study browser entry of a SEG or SR series to show it in the viewport."""
    thumbnail = series_thumbnail(page, description)
    wait_until(lambda: thumbnail.count() > 0, timeout_s,
               f"series {description!r} in the study browser")
    if thumbnail.count() != 1:
        raise ViewerTimeoutError(
            f"{thumbnail.count()} study browser entries match {description!r}; expected one")
    thumbnail.dblclick()


def answer_prompt(page: Page, question: str, answer: str = "Yes",
                  timeout_s: float = PROMPT_TIMEOUT_S) -> None:
    """Wait for OHIF's viewport question and press ``answer``."""
    page.get_by_text(question).wait_for(state="visible", timeout=timeout_s * 1000)
    page.get_by_role("button", name=answer, exact=True).click(timeout=timeout_s * 1000)
    page.get_by_text(question).wait_for(state="hidden", timeout=timeout_s * 1000)


def show_segmentation_panel(page: Page, timeout_s: float = PANEL_TIMEOUT_S) -> None:
    """Open the right-hand segmentation panel unless it is already shown."""
    select = page.locator(SEGMENTATION_SELECT)
    if not select.first.is_visible():
        page.locator(SEGMENTATION_TAB).first.click()
    select.first.wait_for(state="visible", timeout=timeout_s * 1000)


def segment_labels(page: Page) -> list[str]:
    """The segment labels listed in the segmentation panel, in order."""
    return [t.strip() for t in page.locator(ROW_TITLE).all_inner_texts()]


def select_segment(page: Page, label: str, timeout_s: float = SLICE_TIMEOUT_S) -> tuple[int, int]:
    """Click a segment in the segmentation panel (OHIF then shows its centre slice); move the
    mouse away again so the segment's statistics card does not cover the image. Returns the
    slice shown once the counter has settled."""
    page.locator(ROW_TITLE).get_by_text(label, exact=True).click()
    page.mouse.move(*NEUTRAL_MOUSE_XY)
    return _settled_slice(page, timeout_s)


def toggle_all_segments(page: Page) -> None:
    """Press the segmentation panel's eye that shows or hides every segment at once."""
    page.locator(ALL_SEGMENTS_TOGGLE).first.click()
    page.mouse.move(*NEUTRAL_MOUSE_XY)


def labels_when(read: Callable[[], list[str]], count: int) -> Callable[[], list[str] | None]:
    """A ``wait_until`` predicate: the labels ``read`` returns once there are ``count``."""
    def check() -> list[str] | None:
        labels = read()
        return labels if len(labels) >= count else None

    return check


def show_measurement_panel(page: Page, timeout_s: float = PANEL_TIMEOUT_S) -> Locator:
    """Open the right-hand measurement panel unless it is already shown; return it."""
    panel = page.locator(MEASUREMENTS_PANEL).first
    if not panel.is_visible():
        page.locator(MEASUREMENTS_TAB).first.click()
    panel.wait_for(state="visible", timeout=timeout_s * 1000)
    return panel


def measurement_titles(panel: Locator) -> list[str]:
    """Titles of the measurement panel's rows (one row per measurement)."""
    return [t.strip() for t in panel.locator(f"{MEASUREMENT_ROW} {ROW_TITLE}").all_inner_texts()]


def save_screenshot(page: Page, out_dir: Path, name: str, docs_dir: Path | None = None) -> Path:
    """``page`` as ``out_dir/name.png``; also copied to ``docs_dir`` when one is given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    page.screenshot(path=str(path))
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs_dir / path.name)
        log.info("screenshot %s copied to %s", path.name, docs_dir)
    return path
