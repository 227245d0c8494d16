"""The DICOM receiver: application entity, presentation contexts, limits, TLS, TCP_NODELAY.

Every storage SOP class is accepted (a whole-study transfer includes scouts, dose reports,
secondary captures and SRs); only CT series are analysed later. Each listed transfer syntax is
accepted in whichever context the peer proposes it.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import NodeSettings
from dicomnode.db.records import InstanceRecorder
from dicomnode.receiving.handlers import handle_echo, handle_store
from dicomnode.receiving.storage import Storage

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


def set_tcp_nodelay(sock: socket.socket | None) -> None:
    """Disable Nagle: without it each C-STORE waits ~40 ms for a delayed ACK on Linux."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # a closed socket; nothing to tune
            log.debug("TCP_NODELAY not set: %s", exc)


# pynetdicom's DUL thread sleeps this long whenever its socket had nothing to read; its default
# (1 ms) adds up to milliseconds per C-STORE. 0.2 ms took a bare 3.0.4 receiver from about 215
# to 340 instances/s here, for a little CPU while an association is open. The attribute is
# private to the pinned pynetdicom version; if it disappears the default simply stays.
DUL_POLL_INTERVAL_S = 0.0002


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


def build_ae(settings: NodeSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.maximum_pdu_size
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


def start_receiver(
    settings: NodeSettings, storage: Storage, recorder: InstanceRecorder,
    commitment_reports: Any = None,
) -> ThreadedAssociationServer:
    """Start listening in background threads; the caller stops it with ``server.shutdown()``.

    ``commitment_reports``: an EVT_N_EVENT_REPORT handler; when given, the receiver also
    accepts Storage Commitment reports (a PACS confirming the objects the exporter sent)."""
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, _on_conn_open),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [storage, recorder]),
        (evt.EVT_RELEASED, _on_released_or_aborted),
        (evt.EVT_ABORTED, _on_released_or_aborted),
    ]
    if commitment_reports is not None:
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
        handlers.append((evt.EVT_N_EVENT_REPORT, commitment_reports))
    server = ae.start_server(
        (settings.host, settings.port),
        block=False,
        evt_handlers=handlers,
        ssl_context=tls_context(settings),
    )
    if server is None:  # only a blocking server returns None
        raise RuntimeError("pynetdicom did not return the server it started")
    log.info(
        "receiver %s listening on %s:%d%s",
        settings.ae_title,
        settings.host,
        settings.port,
        " (TLS)" if settings.tls_cert else "",
    )
    return server
