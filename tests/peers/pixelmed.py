"""PixelMed's DICOM validators (Debian ``pixelmed-apps``), as IHE Connectathons run them for AI
Results (AIR): ``DicomInstanceValidator`` checks a file against its IOD, ``DicomSRValidator``
an SR's content tree against its templates and context groups.

Both print ``Error:`` and ``Warning:`` lines; the gate is the list of ``Error`` lines. Java's
XPath limits must be lifted for PixelMed's large compiled style sheets. A missing ``java`` or
jar raises ``MissingPeerError`` (tests fail, they never skip).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.peers.processes import MissingPeerError

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
INSTANCE_VALIDATOR = "com.pixelmed.validate.DicomInstanceValidator"
SR_VALIDATOR = "com.pixelmed.validate.DicomSRValidator"
JAVA_OPTIONS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
VALIDATE_TIMEOUT_S = 600.0  # one JVM run; ~40 s of CPU for a real study's SR


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise MissingPeerError("java not found: install default-jre-headless")
    if not PIXELMED_JAR.is_file():
        raise MissingPeerError(f"{PIXELMED_JAR} not found: install pixelmed-apps")
    return java


def pixelmed_report(path: Path, validator: str = INSTANCE_VALIDATOR) -> list[str]:
    """Every non-empty line one PixelMed validator prints for ``path``."""
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    result = subprocess.run(
        [_java(), *JAVA_OPTIONS, "-cp", str(PIXELMED_JAR), validator, str(path)],
        capture_output=True, text=True, errors="replace", timeout=VALIDATE_TIMEOUT_S,
        check=False,
    )
    lines = (result.stdout + "\n" + result.stderr).splitlines()
    if result.returncode != 0 or any("Exception" in line for line in lines):
        raise RuntimeError(f"{validator} failed on {path}: {lines[-5:]}")
    return [line for line in lines if line.strip()]


def pixelmed_errors(path: Path, validator: str = INSTANCE_VALIDATOR) -> list[str]:
    """The ``Error`` lines of one PixelMed validator for ``path`` (empty: no error)."""
    return [line for line in pixelmed_report(path, validator) if line.startswith("Error")]
