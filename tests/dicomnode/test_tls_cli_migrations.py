"""DICOM TLS on the receiver, the schema migrations, the exporter's resend after an abort, and
the `dicomnode send` / `status` commands."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.db.engine import open_database
from dicomnode.db.models import Base
from dicomnode.db.records import InstanceRecorder
from dicomnode.receiving.scp import start_receiver

from .conftest import both_backends, ct_series
from .test_worker_and_exporter import FakePacs, _exporter, _run_job

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate (Debian package openssl)")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "node.key", folder / "node.crt"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_receiver_accepts_tls_and_refuses_plain(settings, storage, sessions,
                                                    certificate) -> None:
    cert, key = certificate
    node = replace(settings.node, tls_cert=cert, tls_key=key)
    server = start_receiver(node, storage, InstanceRecorder(sessions))
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title,
                             tls_args=(client, "127.0.0.1"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        plain = AE(ae_title="PLAINSCU")
        plain.add_requested_context(Verification)
        plain.acse_timeout = plain.network_timeout = 3
        assert not plain.associate(node.host, node.port, ae_title=node.ae_title).is_established
    finally:
        server.shutdown()


@both_backends
def test_migrations_build_exactly_the_models_schema(db_backend, request, tmp_path) -> None:
    """The Alembic history, applied to an empty database, matches the typed models."""
    if db_backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine, _ = open_database(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_exporter_resends_on_a_new_association_after_an_abort(settings, sessions, storage,
                                                             queued_job) -> None:
    pacs = FakePacs()
    aborted: list[int] = []

    def abort_first(event) -> int:
        if not aborted:
            aborted.append(1)
            event.assoc.abort()
            return 0xC000
        pacs.received.append(event.dataset)
        return 0

    pacs.server.unbind(evt.EVT_C_STORE, pacs._store)
    pacs.server.bind(evt.EVT_C_STORE, abort_first)
    try:
        _run_job(settings, sessions, storage, pacs.destination())
        exporter = _exporter(settings, sessions, storage, [pacs.destination()])
        delivered = exporter.run_once() + exporter.run_once()
        assert aborted and delivered == 1 and len(pacs.received) == 1
    finally:
        pacs.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_send_and_status_commands(settings, sessions, storage, receiver, tmp_path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    for i, ds in enumerate(ct_series(4)):
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    (folder / "notes.txt").write_text("not DICOM")
    sent = _cli("send", str(folder), "--host", receiver.host, "--port", str(receiver.port),
                "--aet", receiver.ae_title)
    assert sent.returncode == 0, sent.stderr
    assert "sent 4, failed 0, not DICOM 1" in sent.stdout
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{settings.node.data_dir}"\n')
    status = _cli("status", "--config", str(cfg), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["counts"]["instances"] == 4 and len(report["studies"]) == 1
    text = _cli("status", "--config", str(cfg))
    study_uid = report["studies"][0]["study_instance_uid"]
    assert study_uid in text.stdout and "Totals: studies 1, series 1, instances 4" in text.stdout
    one = _cli("status", "--config", str(cfg), "--study", study_uid)
    assert one.returncode == 0, one.stderr
    assert f"Study {study_uid}: receiving" in one.stdout and "study-received" in one.stdout
    assert "4 instances" in one.stdout
    assert _cli("status", "--config", str(cfg), "--study", "1.2.3").returncode == 1
    none_failed = _cli("retry-export", "--config", str(cfg), "--job", "7", "--destination", "pacs")
    assert none_failed.returncode == 1
    assert "0 failed export(s) of job 7 to pacs" in none_failed.stdout
    echo = _cli("echo", "--host", receiver.host, "--port", str(receiver.port),
                "--aet", receiver.ae_title)
    assert echo.returncode == 0 and "0x0000" in echo.stdout
