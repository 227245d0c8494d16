"""The architecture's import directions, checked on the source and in a fresh interpreter.

dicomnode/ never imports torch or pipeline (the worker reaches the pipeline through the
processor named in configuration). Of dicomnode/, pipeline/ and training/ import only
``dicomnode.contracts``: the records, states and rules both sides share, which itself imports
no torch, networking, SQL, pipeline or other part of the node.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = "dicomnode.contracts"

FORBIDDEN = {
    "dicomnode": {"torch", "pipeline", "training"},
    "pipeline": {"training", "pynetdicom", "sqlalchemy"},
    "training": set(),
    "dicomnode/contracts": {
        "torch", "pipeline", "training", "pynetdicom", "sqlalchemy", "fastapi", "httpx",
        "numpy", "pydicom",
    },
}
# Packages that may use dicomnode only through its contracts.
CONTRACTS_ONLY = ("pipeline", "training", "dicomnode/contracts")


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (``from a import b`` gives ``a`` and
    ``a.b``, since ``b`` may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def offending_imports(path: Path, package: str) -> set[str]:
    names = imported_modules(path)
    bad = _roots(names) & FORBIDDEN[package]
    if package in CONTRACTS_ONLY:
        bad |= {
            n for n in names
            if n.split(".")[0] == "dicomnode" and not n.startswith(CONTRACTS)
        }
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_source_imports_follow_the_architecture(package: str) -> None:
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = offending_imports(path, package)
        if bad:
            offenders.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_the_rule_catches_a_node_import(tmp_path: Path) -> None:
    """The check above is not vacuous: a pipeline module importing more than the contracts,
    or contracts importing SQL, is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from dicomnode.db.queue import JobQueue\nfrom dicomnode.contracts import X\n"
                   "import dicomnode\n")
    assert offending_imports(bad, "pipeline") == {
        "dicomnode", "dicomnode.db.queue", "dicomnode.db.queue.JobQueue",
    }
    bad.write_text("from sqlalchemy import select\n")
    assert offending_imports(bad, "dicomnode/contracts") == {"sqlalchemy"}
    good = tmp_path / "good.py"
    good.write_text("from dicomnode.contracts.stack import check_stack\nimport numpy\n")
    assert offending_imports(good, "pipeline") == set()


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


def test_receiver_process_never_loads_torch() -> None:
    loaded = _loaded_after(
        "import dicomnode.cli, dicomnode.node, dicomnode.receiving.scp, dicomnode.jobs.worker, "
        "dicomnode.delivering.exporter, dicomnode.tools.analyze"
    )
    assert not {"torch", "pipeline"} & loaded


def test_contracts_load_nothing_heavy() -> None:
    loaded = _loaded_after("import dicomnode.contracts, dicomnode.contracts.stack")
    assert not {"torch", "numpy", "pydicom", "sqlalchemy", "pynetdicom", "fastapi"} & loaded
    assert {m for m in loaded if m.startswith("dicomnode.")} <= {
        m for m in loaded if m.startswith(CONTRACTS)
    }


def test_pipeline_loads_only_the_contracts_of_the_node() -> None:
    loaded = _loaded_after("import pipeline.processor, pipeline.runner, pipeline.series")
    node = {m for m in loaded if m.startswith("dicomnode.")}
    assert node and all(m.startswith(CONTRACTS) for m in node), sorted(node)
