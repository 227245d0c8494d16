"""No caller can stall the receiver: idle sockets, a silent TLS caller, one host taking every slot.

Against the real receiver with dcmtk echoscu and pynetdicom as the callers that must get through.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.config import NodeSettings, Settings
from dicomnode.db.records import InstanceRecorder
from dicomnode.receiving.scp import start_receiver
from tests.peers.dcmtk import echoscu

ADMISSION_TIMEOUT_S = 2.0
IDLE_SOCKETS = 20


@contextmanager
def _started(settings: Settings, storage, sessions, **changes: object) -> Iterator[NodeSettings]:
    node = replace(settings.node, association_request_timeout_s=ADMISSION_TIMEOUT_S,
                   max_associations=4, **changes)  # type: ignore[arg-type]
    server = start_receiver(node, storage, InstanceRecorder(sessions))
    try:
        yield node
    finally:
        server.shutdown()


@pytest.fixture()
def guarded(settings, storage, sessions) -> Iterator[NodeSettings]:
    with _started(settings, storage, sessions) as node:
        yield node


def _idle_sockets(node: NodeSettings, count: int) -> list[socket.socket]:
    return [socket.create_connection((node.host, node.port), timeout=10) for _ in range(count)]


def _echo(node: NodeSettings, calling: str = "ECHOSCU", tls: ssl.SSLContext | None = None):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 15
    kwargs = {"tls_args": (tls, "127.0.0.1")} if tls is not None else {}
    return ae.associate(node.host, node.port, ae_title=node.ae_title, **kwargs)


def test_idle_sockets_hold_no_slot_and_are_closed(guarded) -> None:
    idle = _idle_sockets(guarded, IDLE_SOCKETS)  # 20 silent callers, 4 association slots
    try:
        started = time.monotonic()
        result = echoscu(guarded.host, guarded.port, guarded.ae_title, timeout_s=15)
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - started < 15
        # each silent socket is closed by the node once the admission deadline passes
        idle[0].settimeout(ADMISSION_TIMEOUT_S + 5)
        assert idle[0].recv(16) == b""
    finally:
        for sock in idle:
            sock.close()


def test_silent_tls_caller_blocks_nobody(settings, storage, sessions, tmp_path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl (Debian package openssl) makes the test certificate"
    key, cert = tmp_path / "node.key", tmp_path / "node.crt"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
    )
    with _started(settings, storage, sessions, tls_cert=cert, tls_key=key) as node:
        silent = socket.create_connection((node.host, node.port))  # never sends a ClientHello
        try:
            time.sleep(0.2)
            client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
            started = time.monotonic()
            assoc = _echo(node, tls=client)
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            assoc.release()
            assert time.monotonic() - started < 15
        finally:
            silent.close()


def test_one_address_cannot_take_every_slot(settings, storage, sessions, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="dicomnode")
    with _started(settings, storage, sessions, max_associations_per_peer=2) as node:
        first, second = _echo(node, "FIRST"), _echo(node, "SECOND")
        assert first.is_established and second.is_established
        third = _echo(node, "THIRD")
        assert third.is_rejected
        first.release()
        second.release()
        time.sleep(0.3)
        again = _echo(node, "FOURTH")
        assert again.is_established
        again.release()
    lines = [r.getMessage() for r in caplog.records if "association rejected" in r.getMessage()]
    assert any("127.0.0.1:" in line and "'THIRD'" in line and "'CHESTCT'" in line
               and "2 associations already open" in line for line in lines), lines


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [("INTRUDER", None, "calling AE title not in allowed_calling_aets"),
     ("PACS", "SOMEONEELSE", "called AE title is not ours")],
)
def test_rejected_association_is_logged_with_peer_titles_and_reason(
    settings, storage, sessions, caplog, calling, called, reason
) -> None:
    caplog.set_level(logging.WARNING, logger="dicomnode")
    with _started(settings, storage, sessions, allowed_calling_aets=("PACS",)) as node:
        result = echoscu(node.host, node.port, called or node.ae_title, calling, timeout_s=5)
        assert result.returncode != 0
    lines = [r.getMessage() for r in caplog.records if "association rejected" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"calling AE '{calling}'" in lines[0] and reason in lines[0]
    assert "127.0.0.1:" in lines[0]


def test_non_dicom_caller_is_closed_and_logged(guarded, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="dicomnode")
    with socket.create_connection((guarded.host, guarded.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(16) == b""
    assert any("not A-ASSOCIATE-RQ" in r.getMessage() for r in caplog.records)
    assert echoscu(guarded.host, guarded.port, guarded.ae_title).returncode == 0


def test_peer_stalling_mid_pdu_is_cut_off_after_the_network_timeout(settings, storage,
                                                                    sessions) -> None:
    with _started(settings, storage, sessions, network_timeout_s=2.0) as node:
        assoc = _echo(node, "STALLER")
        assert assoc.is_established
        raw = assoc.dul.socket.socket
        # a P-DATA-TF header announcing 1000 bytes, then only 10 of them
        raw.sendall(struct.pack(">BBL", 0x04, 0, 1000) + bytes(10))
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not assoc.is_established, "the node kept the stalled association open"
        other = _echo(node, "NEXT")  # and the node still serves others
        assert other.is_established
        other.release()
