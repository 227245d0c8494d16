"""Project-wide fixtures: paths, the real COVID-CT-MD studies with valid UIDs, and real peers.

Missing peers (Orthanc, dcmtk, dicom3tools, PostgreSQL) or missing shared data fail the test
with the command that fixes it; they are never skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers.dcmtk import StorescpPeer
from tests.peers.orthanc import OrthancError, OrthancPeer, find_plugin
from tests.peers.postgres import PostgresServer
from tests.peers.processes import MissingPeerError, find_tool
from tests.peers.studies import PreparedSeries, prepare_series

REPO_ROOT = Path(__file__).resolve().parents[1]
# A throw-away test Orthanc is killed after this grace instead of its ~3 s clean shutdown.
TEST_ORTHANC_STOP_GRACE_S = 1.0
COVID_CASE = ("covid-ct-md", "series", "COVID-19", "P002")
CAP_CASE = ("covid-ct-md", "series", "CAP", "cap002")


def _require_tool(name: str) -> Path:
    try:
        return find_tool(name)
    except MissingPeerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The project checkout."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data(repo_root: Path) -> Path:
    """``<repo>/../shared/data``: the real data sets the tests read (never copied here)."""
    path = (repo_root / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.fail(
            f"shared test data not found at {path}: the tests need the folder 'shared/data' "
            "next to the project checkout (see the README, section Tests)",
            pytrace=False,
        )
    return path


def _case_dir(shared_data: Path, parts: tuple[str, ...]) -> Path:
    path = shared_data.joinpath(*parts)
    if not path.is_dir():
        pytest.fail(f"missing shared data folder {path}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def covid_study(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedSeries:
    """COVID-CT-MD P002 (133 slices, COVID-19) with valid deterministic UIDs, JPEG Lossless."""
    src = _case_dir(shared_data, COVID_CASE)
    return prepare_series(src, tmp_path_factory.mktemp("covid-P002"))


@pytest.fixture(scope="session")
def cap_study(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedSeries:
    """COVID-CT-MD cap002 (131 slices, community-acquired pneumonia) with valid UIDs."""
    src = _case_dir(shared_data, CAP_CASE)
    return prepare_series(src, tmp_path_factory.mktemp("cap-cap002"))


@pytest.fixture
def require_tool() -> Callable[[str], Path]:
    """``require_tool("dciodvfy")`` returns the executable's path or fails with the install hint."""
    return _require_tool


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancPeer]:
    """A fresh Orthanc (DICOMweb + GDCM plug-ins) on free loopback ports, empty storage."""
    _require_tool("Orthanc")
    _require_tool("storescu")
    try:
        find_plugin("libOrthancDicomWeb.so")
        find_plugin("libOrthancGdcm.so")
    except OrthancError as exc:
        pytest.fail(str(exc), pytrace=False)
    peer = OrthancPeer(work_dir=tmp_path / "orthanc", stop_grace_s=TEST_ORTHANC_STOP_GRACE_S)
    peer.work_dir.mkdir()
    with peer:
        yield peer


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StorescpPeer]:
    """dcmtk storescp on a free loopback port writing into ``tmp_path/received``."""
    _require_tool("storescp")
    _require_tool("echoscu")
    with StorescpPeer(out_dir=tmp_path / "received") as peer:
        yield peer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL 15 server for the whole session (see ``tests/peers/postgres.py``)."""
    try:
        server = PostgresServer()
    except MissingPeerError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server: ``postgresql+psycopg://...``."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url.rsplit("/", 1)[1])
