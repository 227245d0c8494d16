"""Fixtures of the model and stage tests: a synthetic chest phantom and a private registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline.models.phantoms import Phantom, make_phantom


@pytest.fixture
def phantom() -> Phantom:
    return make_phantom()


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """An empty, private weights directory."""
    path = tmp_path / "weights"
    path.mkdir()
    return path
