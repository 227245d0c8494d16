"""Bounded DIMSE message assembly: no received message grows past its limit in memory.

Replaces pynetdicom's per-association ``DIMSEServiceProvider.receive_primitive``. Fragments are
kept as views of the received PDUs and joined once. A data set larger than
``[node] max_instance_mb`` (for Deflated Explicit VR Little Endian: its inflated size, measured
by inflating incrementally with a cap, never the whole stream) is not kept: the rest of it is
read and dropped, and the request reaches the C-STORE handler with an empty data set and a
refusal attached (``refusal_of``), so the sender gets a failure status, not an abort.
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from io import BytesIO
from typing import Any

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.utils import make_target

from dicomnode.receiving.commands import StoreCommand, parse_store_command, store_response_pdu
from dicomnode.receiving.handlers import Answer, StoreRequest, StoreService
from dicomnode.receiving.statuses import REFUSAL_ATTR, Refusal, StoreStatus

log = logging.getLogger(__name__)

COMMAND_MAX_BYTES = 64 * 1024  # a C-STORE command set is a few hundred bytes
NO_DATA_SET = 0x0101
ASSOCIATION_POLL_S = 0.02


def lenient_uid(value: Any) -> tuple[bool, str]:
    """pynetdicom validator for received command UIDs: accept any text, so that a malformed
    Affected SOP Instance UID reaches the handler and gets a failure status instead of an abort.
    Our own handler validates every UID it uses (``storage.check_uid``)."""
    return (True, "") if isinstance(value, str) else (False, "not text")


def install_lenient_uid_validator() -> None:
    _config.VALIDATORS["UI"] = lenient_uid


class _Inflater:
    """Counts the inflated size of a deflated data set, inflating at most ``cap + 1`` bytes."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self.size = 0

    def feed(self, chunk: bytes | memoryview) -> bool:
        """False as soon as the inflated size passes the cap (or the stream is corrupt)."""
        data: bytes | memoryview = chunk
        while data:
            out = self._zlib.decompress(data, self._cap - self.size + 1)
            self.size += len(out)
            if self.size > self._cap:
                return False
            data = self._zlib.unconsumed_tail
        return True


def _complete_store_request(request: C_STORE) -> None:
    """Fill what pynetdicom needs to serve a C-STORE request at all.

    A missing or empty UID, Priority or data set makes pynetdicom drop the request unanswered
    (the sender then waits for its DIMSE timeout); filled with empty values it reaches the
    handler, which refuses it with a precise status. (The setters turn "" into None, hence the
    private attributes.)
    """
    if request.AffectedSOPInstanceUID is None:
        request._affected_sop_instance_uid = UID("")
    if request.AffectedSOPClassUID is None:
        request._affected_sop_class_uid = UID("")
    if request.Priority is None:
        request.Priority = 2
    if request.DataSet is None:
        request.DataSet = BytesIO()


class BoundedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider with bounded, copy-light assembly of received messages."""

    def __init__(
        self, assoc: Any, max_data_set_bytes: int, store: StoreService | None = None
    ) -> None:
        super().__init__(assoc)
        self._max = max_data_set_bytes
        self._store = store
        self._reset()

    def _reset(self) -> None:
        self._command = bytearray()
        self._command_set: Any = None
        self._context_id: int | None = None
        self._chunks: list[memoryview] = []
        self._size = 0
        self._refusal: Refusal | None = None
        self._inflater: _Inflater | None = None
        self._store_command: StoreCommand | None = None

    def receive_primitive(self, primitive: Any) -> None:
        for context_id, data in primitive.presentation_data_value_list:
            header = data[0]
            if header & 1:  # command fragment
                if self._command_set is not None or len(self._command) + len(data) > (
                    COMMAND_MAX_BYTES
                ):
                    self._abort("command set out of order or longer than 64 KiB")
                    return
                self._command += memoryview(data)[1:]
                if header & 2 and not self._command_done(context_id):
                    return
            else:  # data set fragment
                if self._command_set is None:
                    self._abort("data set fragment before its command set")
                    return
                self._add_data(memoryview(data)[1:])
                if header & 2:
                    self._dispatch()

    def _command_done(self, context_id: int) -> bool:
        store = parse_store_command(bytes(self._command)) if self._store is not None else None
        if store is not None:  # the direct path: no pydicom decode, see ``_serve_direct``
            self._store_command, self._command_set = store, store
            self._context_id = context_id
        else:
            try:
                command = decode(BytesIO(bytes(self._command)), True, True)
                kind = _MESSAGE_TYPES[int(command.CommandField)][1]
                has_data = int(command.CommandDataSetType) != NO_DATA_SET
            except Exception as exc:  # a command set that cannot be read cannot be answered
                self._abort(f"undecodable command set ({type(exc).__name__})")
                return False
            self._command_set, self._context_id = command, context_id
            self._kind = kind
            if not has_data:
                self._dispatch()
                return True
        try:
            syntax = self.assoc._accepted_cx[context_id].transfer_syntax[0]
        except (KeyError, IndexError, AttributeError):
            syntax = None
        if syntax == DeflatedExplicitVRLittleEndian:
            self._inflater = _Inflater(self._max)
        return True

    def _add_data(self, chunk: memoryview) -> None:
        self._size += len(chunk)
        if self._refusal is not None:
            return  # already refused: read and drop the rest of the message
        if self._size > self._max:
            self._refuse(f"data set over the limit of {self._max // (1024 * 1024)} MB")
            return
        if self._inflater is not None:
            try:
                within = self._inflater.feed(chunk)
            except zlib.error:
                self._refusal = (StoreStatus.CANNOT_UNDERSTAND, "deflated data set is corrupt")
                self._chunks = []
                return
            if not within:
                self._refuse(f"inflated data set over the limit of {self._max // 2**20} MB")
                return
        self._chunks.append(chunk)

    def _refuse(self, comment: str) -> None:
        self._refusal = (StoreStatus.INSTANCE_TOO_LARGE, comment)
        self._chunks = []

    def _dispatch(self) -> None:
        if self._store_command is not None:
            command, context_id = self._store_command, int(self._context_id or 0)
            data, refusal = BytesIO(b"".join(self._chunks)), self._refusal
            self._reset()
            self._serve_direct(command, context_id, data, refusal)
            return
        message = DIMSEMessage()
        message.__class__ = self._kind
        message.command_set = self._command_set
        message.context_id = self._context_id
        message.encoded_command_set = BytesIO(bytes(self._command))
        message.data_set = BytesIO(b"".join(self._chunks))
        refusal = self._refusal
        self._reset()
        try:
            request = message.message_to_primitive()
        except Exception as exc:
            log.warning("invalid DIMSE message from the peer (%s); aborting", exc)
            self.dul.event_queue.put("Evt19")
            return
        if isinstance(request, C_STORE):
            if request.MessageID is None:
                self._abort("C-STORE request without a Message ID")
                return
            _complete_store_request(request)
        if refusal is not None:
            setattr(request, REFUSAL_ATTR, refusal)
        context_id = int(message.context_id or 0)
        if isinstance(request, C_STORE) and request.is_valid_request:
            self._serve_store(request, context_id)
        elif isinstance(request, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[int(request.MessageIDBeingRespondedTo or 0)] = request
        elif isinstance(request, N_EVENT_REPORT) and request.is_valid_request:
            # As pynetdicom does: served on a thread of its own, or it would block this one
            # (a PACS's Storage Commitment report, see dicomnode.delivering.commitment).
            threading.Thread(
                target=make_target(self.assoc._serve_request), args=(request, context_id),
                name="n-event-report", daemon=True,
            ).start()
        else:
            self.msg_queue.put((context_id, request))  # type: ignore[arg-type]

    def get_msg(self, block: bool = False) -> Any:
        """The association thread polls this every millisecond; a wait on the queue instead
        wakes it at once for a message (C-ECHO) and otherwise every ``ASSOCIATION_POLL_S``, when
        it also notices a release request (so a release is answered within 20 ms)."""
        if block:
            return super().get_msg(block=True)
        try:
            return self.msg_queue.get(block=True, timeout=ASSOCIATION_POLL_S)
        except queue.Empty:
            return None, None

    def _serve_store(self, request: C_STORE, context_id: int) -> None:
        """Answer a C-STORE here, in the thread that read it (pynetdicom's DUL reactor).

        pynetdicom hands each request to the association's own thread, which polls its queue
        every millisecond; the response then goes back to this thread to be sent. Serving it
        here saves two thread hand-offs per instance (most of the latency on a loaded machine),
        and the response is sent on this thread's next loop. The storage service is chosen
        directly, so a request with an empty or malformed Affected SOP Class UID reaches the
        handler (and its failure status) instead of an abort.
        """
        assoc = self.assoc
        context = assoc._accepted_cx.get(context_id)
        if context is None:
            self._abort(f"C-STORE on presentation context {context_id}, which was not accepted")
            return
        self.cancel_req = {}
        StorageServiceClass(assoc).SCP(request, context)

    def _serve_direct(
        self, command: StoreCommand, context_id: int, data: BytesIO, refusal: Refusal | None
    ) -> None:
        """Store and answer a C-STORE in this thread, without pynetdicom's service class.

        The response PDU is written to the socket here when nothing else waits to be sent
        (nothing can then be sent between the PDUs of another message); otherwise it joins
        pynetdicom's send queue behind what is there."""
        assoc = self.assoc
        context = assoc._accepted_cx.get(context_id)
        if context is None or self._store is None:
            self._abort(f"C-STORE on presentation context {context_id}, which was not accepted")
            return
        self.cancel_req = {}
        request = StoreRequest(
            sop_instance_uid=command.sop_instance_uid, sop_class_uid=command.sop_class_uid,
            calling_ae_title=str(assoc.requestor.ae_title).strip(),
            transfer_syntax=str(context.transfer_syntax[0]), data_set=data, refusal=refusal,
        )
        try:
            answer = self._store.store(request)
        except Exception:  # as pynetdicom answers an exception in a C-STORE handler
            log.exception("exception while storing instance %s", command.sop_instance_uid)
            answer = Answer(int(StoreStatus.PROCESSING_FAILURE), "unexpected error")
        if not assoc.is_established:
            return
        dul = self.dul
        sock = dul.socket
        if sock is not None and dul.to_provider_queue.empty():
            sock.send(store_response_pdu(context_id, command, answer.status, answer.comment))
            return
        response = C_STORE()
        response.MessageIDBeingRespondedTo = command.message_id
        if command.sop_class_uid:
            response.AffectedSOPClassUID = command.sop_class_uid
        if command.sop_instance_uid:
            response.AffectedSOPInstanceUID = command.sop_instance_uid
        response.Status = answer.status
        if answer.comment and answer.status:
            response.ErrorComment = answer.comment  # type: ignore[assignment]
        self.send_msg(response, context_id)

    def _abort(self, reason: str) -> None:
        log.warning("malformed DIMSE message from the peer (%s); aborting", reason)
        self._reset()
        self.dul.event_queue.put("Evt19")
