"""The architecture's import directions, checked on the source and in a fresh interpreter.

dicomnode/ never imports torch or pipeline (the worker reaches the pipeline through the
processor named in configuration); pipeline/ never imports dicomnode; training/ may import
pipeline but not dicomnode.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "dicomnode": {"torch", "pipeline", "training"},
    "pipeline": {"dicomnode", "training", "pynetdicom", "sqlalchemy"},
    "training": {"dicomnode"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_source_imports_follow_the_architecture(package: str) -> None:
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_receiver_process_never_loads_torch() -> None:
    code = (
        "import sys, dicomnode.cli, dicomnode.node, dicomnode.receiving.scp, "
        "dicomnode.jobs.worker, "
        "dicomnode.delivering.exporter, dicomnode.tools.analyze\n"
        "bad = [m for m in ('torch', 'pipeline') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
