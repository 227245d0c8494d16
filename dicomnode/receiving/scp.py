"""The DICOM receiver: application entity, presentation contexts, limits, TLS, TCP_NODELAY.

Every storage SOP class is accepted (a whole-study transfer includes scouts, dose reports,
secondary captures and SRs); only CT series are analysed later. Each listed transfer syntax is
accepted in whichever context the peer proposes it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import NodeSettings
from dicomnode.db.records import InstanceRecorder
from dicomnode.db.row_writer import RowWriter
from dicomnode.errors import ConfigError
from dicomnode.receiving.admission import AdmissionRules, log_rejection
from dicomnode.receiving.handlers import StoreService, handle_echo
from dicomnode.receiving.messages import install_lenient_uid_validator
from dicomnode.receiving.storage import Storage
from dicomnode.receiving.wire import make_server

log = logging.getLogger(__name__)

ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14, Selection Value 1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.5",  # RLE Lossless
)


# What we announce when [node] maximum_pdu_size = 0: large enough that a CT slice travels in one
# PDU, small enough that a PDU never holds a whole oversized data set in memory (a PDU longer
# than announced closes the connection, see ``wire.ReplaySocket``).
DEFAULT_MAX_PDU_BYTES = 4 * 1024 * 1024


def set_tcp_nodelay(sock: socket.socket | None) -> None:
    """Disable Nagle: without it each C-STORE waits ~40 ms for a delayed ACK on Linux."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # a closed socket; nothing to tune
            log.debug("TCP_NODELAY not set: %s", exc)


# pynetdicom's DUL thread sleeps this long whenever its socket had nothing to read (default
# 1 ms). Our socket's ``ready`` already waits in select (``wire.ReplaySocket``), so no extra
# sleep is needed. The attribute is private to the pinned pynetdicom version; if it
# disappears the default simply stays.
DUL_POLL_INTERVAL_S = 0.0


STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"


def _on_conn_open(event: Any) -> None:
    set_tcp_nodelay(getattr(event.assoc.dul.socket, "socket", None))
    dul = event.assoc.dul
    if hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_POLL_INTERVAL_S


def _on_released_or_aborted(event: Any) -> None:
    log.info(
        "association with %s %s",
        event.assoc.requestor.ae_title,
        "aborted" if event.event.name == "EVT_ABORTED" else "released",
    )


def _on_rejected(event: Any) -> None:
    """pynetdicom's own rejections (admission logs its own): the association limit."""
    assoc = event.assoc
    try:
        peer: Any = (assoc.requestor.address, assoc.requestor.port)
    except (AttributeError, ValueError):
        peer = "unknown"
    log_rejection(
        peer, str(assoc.requestor.ae_title), str(assoc.acceptor.ae_title),
        f"rejected by the DICOM layer (all {assoc.ae.maximum_associations} association "
        "slots in use, or no acceptable negotiation)",
    )


def admission_rules(settings: NodeSettings) -> AdmissionRules:
    return AdmissionRules(
        ae_title=settings.ae_title,
        require_called_aet=settings.require_called_aet,
        allowed_calling_aets=tuple(a.strip() for a in settings.allowed_calling_aets),
        timeout_s=settings.association_request_timeout_s,
        max_per_peer=settings.max_associations_per_peer,
        max_pending=settings.max_pending_connections,
    )


def build_ae(settings: NodeSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.maximum_pdu_size or DEFAULT_MAX_PDU_BYTES
    ae.require_called_aet = settings.require_called_aet
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def tls_context(settings: NodeSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(settings.tls_cert), keyfile=str(settings.tls_key))
    if settings.tls_ca is not None:
        ctx.load_verify_locations(cafile=str(settings.tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def preflight(settings: NodeSettings) -> None:
    """Fail with one clear line, before anything is created, if the receiver cannot start:
    an unreadable TLS certificate or key, or a DICOM port that is taken or not ours to bind."""
    try:
        tls_context(settings)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the TLS certificate {settings.tls_cert} / key {settings.tls_key}: "
            f"{exc.strerror or exc}"
        ) from None
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
                " (is another DICOM node running there?)"
            ) from None


def start_receiver(
    settings: NodeSettings, storage: Storage, recorder: InstanceRecorder,
    commitment_reports: Any = None, reuse_port: bool = False,
) -> ThreadedAssociationServer:
    """Start listening in background threads; the caller stops it with ``server.shutdown()``.

    ``commitment_reports``: an EVT_N_EVENT_REPORT handler; when given, the receiver also
    accepts Storage Commitment reports (a PACS confirming the objects the exporter sent).
    ``reuse_port``: share the port with other receiver processes (``receiving.processes``)."""
    ae = build_ae(settings)
    max_bytes = settings.max_instance_mb * 1024 * 1024
    service = StoreService(storage, recorder, max_bytes, rows=RowWriter(recorder))
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, _on_conn_open),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, service.handle_event),
        (evt.EVT_RELEASED, _on_released_or_aborted),
        (evt.EVT_ABORTED, _on_released_or_aborted),
    ]
    # Received command UIDs are validated by the handler, which answers a failure status;
    # pynetdicom's default validation would abort the association instead.
    install_lenient_uid_validator()
    # pynetdicom's "standard" handlers narrate every PDU and message: costly and not logged.
    _config.LOG_HANDLER_LEVEL = "none"
    handlers.append((evt.EVT_REJECTED, _on_rejected))
    if commitment_reports is not None:
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
        handlers.append((evt.EVT_N_EVENT_REPORT, commitment_reports))
    server = make_server(
        ae, (settings.host, settings.port), ssl_context=tls_context(settings),
        handlers=handlers, rules=admission_rules(settings),
        max_data_set_bytes=max_bytes, store_service=service, reuse_port=reuse_port,
    )
    thread = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
    thread.start()
    ae._servers.append(server)
    log.info(
        "receiver %s listening on %s:%d%s",
        settings.ae_title,
        settings.host,
        settings.port,
        " (TLS)" if settings.tls_cert else "",
    )
    return server
