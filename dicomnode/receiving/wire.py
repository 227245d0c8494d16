"""The association side of an admitted connection: replayed request, bounded PDUs, fast reads.

``GuardedRequestHandler`` builds each acceptor association as pynetdicom's handler does, with
two replacements: the socket (``ReplaySocket``: serves the A-ASSOCIATE-RQ already read during
admission, refuses a PDU longer than the node's limit, reads large PDUs in few system calls) and
the DIMSE provider (``messages.BoundedDIMSE``).
"""

from __future__ import annotations

import copy
import logging
import select
import ssl
from typing import Any

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler

from dicomnode.receiving.admission import GuardedAssociationServer
from dicomnode.receiving.handlers import StoreService
from dicomnode.receiving.messages import BoundedDIMSE

log = logging.getLogger(__name__)

PDU_OVERHEAD_BYTES = 1024 * 1024
WAIT_FOR_DATA_S = 0.005  # command set, PDV headers: a PDU may exceed its data a little


class ReplaySocket(AssociationSocket):
    def __init__(self, assoc: Any, client_socket: Any, prefix: bytes, max_pdu: int) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._prefix = bytearray(prefix)
        self._max_pdu = max_pdu

    @property
    def ready(self) -> bool:
        """Data to read? Waits up to ``WAIT_FOR_DATA_S`` when there is nothing to send.

        pynetdicom's reactor polls with a zero timeout and sleeps between polls; waiting in
        ``select`` instead wakes the thread when data arrives and not hundreds of times a second
        in between (responses to C-STORE are queued by this same thread, see
        ``messages.BoundedDIMSE._serve_store``; others wait at most this long).
        """
        if self._prefix:
            return True
        sock = self.socket
        if sock is None or not self._is_connected:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        dul = self.assoc.dul
        wait = WAIT_FOR_DATA_S if dul.to_provider_queue.empty() and dul.event_queue.empty() else 0
        try:
            readable, _, _ = select.select([sock], [], [], wait)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # the connection is gone
            return False
        return bool(readable)

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self._max_pdu:
            log.warning("peer announced a PDU of %d bytes (limit %d); closing", nr_bytes,
                        self._max_pdu)
            raise OSError("PDU over the node's limit")
        out = bytearray(nr_bytes)
        view = memoryview(out)
        got = min(len(self._prefix), nr_bytes)
        if got:
            view[:got] = self._prefix[:got]
            del self._prefix[:got]
        sock = self.socket
        while got < nr_bytes and sock is not None:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if not n:
                break
            got += n
        del view
        if got < nr_bytes:
            del out[got:]
        return out


def copy_contexts(contexts: list[Any]) -> list[Any]:
    """Each association's own copy of the supported presentation contexts.

    pynetdicom deep-copies them per association: 41 ms of CPU for our 171 contexts, paid by every
    association (a modality that sends one image per association pays it per image). Their
    fields are scalars, immutable UIDs and one list of transfer syntaxes, so copying each
    context and that list gives the same independence in a fraction of a millisecond."""
    out = []
    for context in contexts:
        mine = copy.copy(context)
        mine._transfer_syntax = list(context._transfer_syntax)
        out.append(mine)
    return out


class GuardedRequestHandler(RequestHandler):
    server: GuardedAssociationServer

    def _create_association(self) -> Association:
        server = self.server
        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{id(assoc):x}"  # pynetdicom finds acceptors by this name
        request = server.take_request(self.request)
        sock = ReplaySocket(assoc, self.request, request.pdu, server.max_pdu_bytes)
        assoc.set_socket(sock)
        assoc.dimse = BoundedDIMSE(assoc, server.max_data_set_bytes, server.store_service)
        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        acceptor.supported_contexts = copy_contexts(server.contexts)
        assoc.requestor.address_info = self.remote
        bound: dict[Any, Any] = server._handlers
        for event, handlers in bound.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler in handlers:
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def make_server(
    ae: Any, address: tuple[str, int], *, ssl_context: Any, handlers: list[Any], rules: Any,
    max_data_set_bytes: int, store_service: StoreService | None = None,
    reuse_port: bool = False,
) -> GuardedAssociationServer:
    server = GuardedAssociationServer(
        ae, address, ae.ae_title, ae.supported_contexts, ssl_context, handlers,
        request_handler=GuardedRequestHandler, rules=rules, reuse_port=reuse_port,
    )
    server.max_data_set_bytes = max_data_set_bytes
    server.store_service = store_service
    server.max_pdu_bytes = (ae.maximum_pdu_size or max_data_set_bytes) + PDU_OVERHEAD_BYTES
    return server
