"""Admitting connections: TLS and the A-ASSOCIATE-RQ are read off the accept loop, with a deadline.

pynetdicom's own server finishes the TLS handshake inside its accept loop (one caller that never
sends a ClientHello blocks every other caller) and turns each accepted socket into an
association thread that holds a slot until its ARTIM timer ends. Here the accept loop only
accepts. Each connection gets a short-lived thread that completes the TLS handshake and reads
the whole A-ASSOCIATE-RQ PDU within ``[node] association_request_timeout_s``; only then is it
handed to pynetdicom, which reads the request again from memory. A caller with a wrong called
or calling AE title, or with too many associations open from its address, is answered with an
A-ASSOCIATE-RJ; every refusal is logged with the peer address, both AE titles and the reason.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

ASSOCIATE_RQ = 0x01
RQ_MIN_LENGTH = 68  # fixed fields of an A-ASSOCIATE-RQ after its 6-byte header (PS3.8 9.3.2)
RQ_MAX_LENGTH = 256 * 1024  # 128 presentation contexts fit in a few KiB

# (result, source, reason) of an A-ASSOCIATE-RJ (PS3.8 9.3.4)
REJECT_CALLED_AE = (1, 1, 7)  # permanent, service user, called AE title not recognised
REJECT_CALLING_AE = (1, 1, 3)  # permanent, service user, calling AE title not recognised
REJECT_LIMIT = (2, 3, 2)  # transient, service provider (presentation), local limit exceeded


class AdmissionRefusedError(Exception):
    """A connection is refused before it becomes an association; the message says why."""

    def __init__(self, reason: str, reject: tuple[int, int, int] | None = None) -> None:
        super().__init__(reason)
        self.reject = reject  # None: close without an A-ASSOCIATE-RJ (not a DICOM caller)


@dataclass(frozen=True)
class AdmissionRules:
    ae_title: str
    require_called_aet: bool
    allowed_calling_aets: tuple[str, ...]
    timeout_s: float
    max_per_peer: int
    max_pending: int


@dataclass(frozen=True)
class AssociateRequest:
    pdu: bytes
    called: str
    calling: str


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


def _read_exact(sock: socket.socket, count: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AdmissionRefusedError("no complete A-ASSOCIATE-RQ before the deadline")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(count - len(data))
        except TimeoutError:
            raise AdmissionRefusedError("no complete A-ASSOCIATE-RQ before the deadline") from None
        if not chunk:
            raise AdmissionRefusedError("connection closed before a complete A-ASSOCIATE-RQ")
        data += chunk
    return bytes(data)


def _ae(field: bytes) -> str:
    return field.decode("ascii", "replace").strip(" \x00")


def read_associate_rq(sock: socket.socket, deadline: float) -> AssociateRequest:
    """The caller's whole A-ASSOCIATE-RQ PDU, or AdmissionRefusedError if it is late or not one."""
    header = _read_exact(sock, 6, deadline)
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type != ASSOCIATE_RQ:
        raise AdmissionRefusedError(f"first PDU has type 0x{pdu_type:02X}, not A-ASSOCIATE-RQ")
    if not RQ_MIN_LENGTH <= length <= RQ_MAX_LENGTH:
        raise AdmissionRefusedError(f"A-ASSOCIATE-RQ length {length} out of range")
    body = _read_exact(sock, length, deadline)
    return AssociateRequest(header + body, called=_ae(body[4:20]), calling=_ae(body[20:36]))


def _peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def log_rejection(address: Any, calling: str, called: str, reason: str) -> None:
    log.warning(
        "association rejected: peer %s, calling AE %r, called AE %r: %s",
        _peer(address), calling, called, reason,
    )


class GuardedAssociationServer(ThreadedAssociationServer):
    """A pynetdicom server whose accept loop never waits on a caller (see the module doc)."""

    rules: AdmissionRules
    max_data_set_bytes: int = 0  # set by ``wire.make_server``
    max_pdu_bytes: int = 0
    store_service: Any = None  # ``handlers.StoreService``: C-STORE served without pynetdicom's

    def shutdown(self) -> None:
        """Stop accepting, then commit the rows of the instances already acknowledged."""
        super().shutdown()
        if self.store_service is not None:
            self.store_service.close()

    def __init__(
        self, *args: Any, rules: AdmissionRules, reuse_port: bool = False, **kwargs: Any
    ) -> None:
        self.rules = rules
        self.reuse_port = reuse_port  # several receiver processes share the port
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._requests: dict[int, AssociateRequest] = {}
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # type: ignore[union-attr]
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only: the TLS handshake happens in the connection's own thread."""
        sock, address = self.socket.accept()  # type: ignore[union-attr]
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        per_peer_pending = max(4, self.rules.max_pending // 2)
        with self._lock:
            total = sum(self._pending.values())
            if total >= self.rules.max_pending or self._pending[host] >= per_peer_pending:
                full = True
            else:
                full = False
                self._pending[host] += 1
        if full:
            log_rejection(client_address, "", "", "too many connections still negotiating")
            self.shutdown_request(request)
            return
        threading.Thread(
            target=self._admit, args=(request, client_address), name="admission", daemon=True
        ).start()

    def _admit(self, sock: socket.socket, address: Any) -> None:
        host = str(address[0])
        try:
            sock, request = self._negotiate(sock, address)
        except (AdmissionRefusedError, OSError, ValueError) as exc:
            reject = exc.reject if isinstance(exc, AdmissionRefusedError) else None
            if reject is None:  # AE refusals were logged with their titles already
                log_rejection(address, "", "", str(exc) or type(exc).__name__)
            self._close(sock, reject)
            return
        finally:
            with self._lock:
                self._pending[host] -= 1
                if self._pending[host] <= 0:
                    del self._pending[host]
        with self._lock:
            self._requests[id(sock)] = request
        try:
            self.finish_request(sock, address)
        except Exception:
            self.handle_error(sock, address)
            self.shutdown_request(sock)
        finally:
            with self._lock:
                self._requests.pop(id(sock), None)

    def take_request(self, sock: Any) -> AssociateRequest:
        with self._lock:
            return self._requests.pop(id(sock))

    def _negotiate(
        self, sock: socket.socket, address: Any
    ) -> tuple[socket.socket, AssociateRequest]:
        deadline = time.monotonic() + self.rules.timeout_s
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
            sock.settimeout(self.rules.timeout_s)
            try:
                sock.do_handshake()  # type: ignore[attr-defined]
            except (TimeoutError, ssl.SSLError) as exc:
                raise AdmissionRefusedError(f"TLS handshake failed: {exc}") from None
        request = read_associate_rq(sock, deadline)
        self._check_request(request, address)
        # pynetdicom's reactor waits in select and then reads; a peer that stops in the middle
        # of a PDU is cut off after the network timeout instead of holding the thread forever.
        sock.settimeout(self.ae.network_timeout)
        return sock, request

    def _check_request(self, request: AssociateRequest, address: Any) -> None:
        rules = self.rules
        reason, reject = "", None
        if rules.require_called_aet and request.called != rules.ae_title.strip():
            reason, reject = "called AE title is not ours", REJECT_CALLED_AE
        elif rules.allowed_calling_aets and request.calling not in rules.allowed_calling_aets:
            reason, reject = "calling AE title not in allowed_calling_aets", REJECT_CALLING_AE
        else:
            host = str(address[0])
            open_here = sum(
                1 for assoc in self.active_associations
                if _requestor_host(assoc) == host
            )
            if open_here >= rules.max_per_peer:
                reason = f"{open_here} associations already open from this address"
                reject = REJECT_LIMIT
        if reject is not None:
            log_rejection(address, request.calling, request.called, reason)
            raise AdmissionRefusedError(reason, reject)

    def _close(self, sock: socket.socket, reject: tuple[int, int, int] | None) -> None:
        try:
            if reject is not None:
                sock.settimeout(1.0)
                sock.sendall(reject_pdu(*reject))
        except OSError:
            pass
        self.shutdown_request(sock)


def _requestor_host(assoc: Any) -> str | None:
    try:
        return str(assoc.requestor.address)
    except (AttributeError, ValueError):
        return None
