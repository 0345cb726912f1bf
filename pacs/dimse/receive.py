"""C-STORE requests taken by the DUL thread straight from the association's socket.

pynetdicom receives a C-STORE through two threads: the DUL thread decodes each P-DATA-TF PDU
into objects and runs its state machine, the DIMSE layer gathers the fragments, pydicom
decodes the command set, the association thread (woken through a queue) runs the handler,
pydicom encodes the response, and the DUL thread (woken again) turns it into a PDU. With one
data set per PDU that was ~2 ms of CPU per CT slice with a handler that does nothing, more
than storing it (bench/receive_path.py). Here, on an established association of our server,
the DUL thread itself, per request:

- reads each P-DATA-TF (PS3.8 9.3.5) into one buffer and walks its PDV items (PS3.8 E.2);
- decodes the command set (Implicit VR Little Endian, PS3.7 6.3.1) and, for a C-STORE-RQ
  (PS3.7 9.3.1.1) on an accepted context of that SOP class with a data set, gathers the data
  set's fragments and joins them once;
- runs the handler bound to ``EVT_C_STORE`` with the same request primitive and context
  pynetdicom would give it (``pacs.dimse.handlers.handle_store``);
- writes the C-STORE-RSP (PS3.7 9.3.1.2) as P-DATA-TF PDUs no longer than the peer's maximum.

Every other message (C-ECHO, C-FIND, C-MOVE, C-GET, a C-STORE on a context of another SOP
class) and every other PDU (release, abort) goes to pynetdicom as before, as the PDUs it would
have read: a message's PDUs are held until its command set is complete and says whose it is.
A PDU that holds the end of one message and the start of the next is handed on as two
(pynetdicom takes one message per PDU and dropped the rest). P-DATA-TF PDUs whose items do not
fill them, PDVs out of order (a data set fragment before its command, a command fragment inside
a data set, a fragment on another context than its command's) and, while established, a PDU
longer than our maximum length are invalid PDUs: A-ABORT, as pynetdicom answers a PDU it
cannot decode. ``EVT_PDU_RECV``, ``EVT_DATA_RECV`` and the DIMSE events do not fire for the
PDUs and messages taken here. The ``EVT_C_STORE`` handler runs in the DUL thread: it may abort
(as pynetdicom lets an SCP handler: the A-ABORT is sent once it returns) but must not release,
abort blocking or send DIMSE messages on its association. Only a peer that sends without
waiting for responses (no asynchronous operations are negotiated) could see answers out of
order: pynetdicom's messages earlier in a PDU are answered after our C-STORE later in it.

Written against pynetdicom 3.0 (the pinned version); ``tests/pacs/test_dimse_receive.py``
checks the DUL method replaced here is still where this expects it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from pacs.dimse.direct import (
    C_STORE_RQ,
    C_STORE_RSP,
    COMMAND,
    LAST,
    P_DATA_TF,
    command_element,
    command_pdus,
    max_fragment,
    parse_command,
    pdv_items,
    recv_into_all,
    uid_value,
)
from pacs.logs import association_id
from pacs.part10 import FramedDigest, framed_digest

log = logging.getLogger(__name__)

# PS3.7 E.1: CommandDataSetType "no data set".
NO_DATA_SET = b"\x01\x01"
# pynetdicom's statuses for an exception in an EVT_C_STORE handler, and for a status of a
# type it cannot use.
HANDLER_FAILED = 0xC211
INVALID_STATUS = 0xC002
# PS3.8 9.3.1: PDU types pynetdicom reads (others: an unrecognised PDU, Evt19).
_PDU_TYPES = range(0x01, 0x08)


@dataclass
class _Request:
    """Our C-STORE request whose data set is arriving."""

    context: Any
    MessageID: int
    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str
    Priority: int
    MoveOriginator: tuple[str, int] | None
    TransferSyntaxUID: str
    # The blob's SHA-256, fed each fragment as it arrives: hashed while the peer still sends
    # (pacs.part10.framed_digest), not after the whole data set is in.
    digest: Any
    data: list[memoryview] = field(default_factory=list)


@dataclass(frozen=True)
class _Ended:
    """A message ended with the PDV before *at*; *theirs*: it was pynetdicom's."""

    at: int
    theirs: bool


class Invalid(Exception):
    """PDVs that break PS3.8 9.3.5 / E.2: the association is aborted."""


class StoreReceiver:
    """The C-STORE requests of one association, taken from its P-DATA-TF PDUs.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        An acceptor's association.
    on_data : callable
        Called with *assoc* for every P-DATA-TF taken (as ``EVT_PDU_RECV`` would be).
    """

    def __init__(self, assoc: Any, on_data: Callable[[Any], None]) -> None:
        self.assoc = assoc
        self.on_data = on_data
        self._held: list[bytes | bytearray] = []  # PDUs of a message whose owner is not known yet
        self._command: list[memoryview] = []  # the current message's command fragments
        self._ours: bool | None = None  # owner of the current message (None: undecided)
        self._data_follows = False  # the current message's data set is arriving
        self._request: _Request | None = None

    @property
    def title(self) -> str:
        """The peer's AE title, for log lines."""
        return str(self.assoc.requestor.ae_title).strip()

    def receive(self, pdu: bytes | bytearray, sock: socket.socket) -> list[bytes | bytearray]:
        """Take what is ours of one P-DATA-TF PDU (*pdu*, header included); return the PDUs
        for pynetdicom, in order. Our requests are answered on *sock*.

        Raises
        ------
        Invalid
            See the class; the association is to be aborted.
        """
        pdvs = pdv_items(pdu)
        if not pdvs:
            raise Invalid("P-DATA-TF without PDV items, or items that do not fill it")
        self.on_data(self.assoc)
        out: list[bytes | bytearray] = []
        while pdvs:
            # Up to the PDV that ends a message, if one does: what follows it is handled as a
            # PDU of its own (pynetdicom reads one message per PDU and drops the rest).
            ended = self._take(pdvs, sock)
            if ended is None:  # the PDU ends inside a message
                if self._ours is None:  # its command is not complete yet
                    self._held.append(pdu)
                elif not self._ours:
                    out += [*self._held, pdu]
                    self._held = []
                return out
            if ended.theirs:
                out += [*self._held, pdu if ended.at == len(pdvs) else _reframed(pdvs[: ended.at])]
            self._held = []
            pdvs = pdvs[ended.at :]
            if pdvs:
                pdu = _reframed(pdvs)
        return out

    def _take(self, pdvs: list[tuple[int, int, memoryview]], sock: socket.socket) -> _Ended | None:
        """Follow the PDVs (answering our request if they complete it) up to the end of the
        current message; None if they end first."""
        for number, (context_id, control, value) in enumerate(pdvs):
            is_command, last = control & COMMAND, control & LAST
            if self._data_follows:
                if is_command:
                    raise Invalid("command fragment inside a data set")
                if self._ours:
                    request = self._request
                    assert request is not None
                    if context_id != request.context.context_id:
                        raise Invalid("data set fragment on another presentation context")
                    request.data.append(value)
                    request.digest.update(value)
                if not last:
                    continue
                ours, self._ours, self._data_follows = self._ours, None, False
                if ours:
                    assert self._request is not None
                    request, self._request = self._request, None
                    self._store(request, sock)
                return _Ended(number + 1, theirs=not ours)
            if not is_command:
                raise Invalid("data set fragment before its command")
            self._command.append(value)
            if not last:
                continue
            command, self._command = b"".join(self._command), []
            try:
                elements = parse_command(command)
            except ValueError as exc:
                raise Invalid(f"command set: {exc}") from exc
            self._data_follows = elements.get(0x0800, NO_DATA_SET) != NO_DATA_SET
            self._request = self._ours_to_take(context_id, elements) if self._data_follows else None
            self._ours = self._request is not None
            if not self._data_follows:
                self._ours = None
                return _Ended(number + 1, theirs=True)
        return None

    def _ours_to_take(self, context_id: int, elements: dict[int, bytes]) -> _Request | None:
        """A C-STORE request we answer here, or None for pynetdicom."""
        assoc = self.assoc
        if elements.get(0x0100) != struct.pack("<H", C_STORE_RQ):
            return None
        context = assoc._accepted_cx.get(context_id)
        if context is None or not assoc.is_established or assoc._sent_release:
            return None
        try:
            class_uid = _text(elements[0x0002])
            instance_uid = _text(elements[0x1000])
            (message_id,) = struct.unpack("<H", elements[0x0110])
            (priority,) = struct.unpack("<H", elements.get(0x0700, b"\0\0"))
            move_originator = None
            if 0x1030 in elements:
                (moving_id,) = struct.unpack("<H", elements[0x1031])
                move_originator = (_text(elements[0x1030]), moving_id)
        except (KeyError, struct.error, UnicodeDecodeError):
            return None
        if (
            class_uid != str(context.abstract_syntax)
            or class_uid in assoc.acceptor.accepted_common_extended
            or not issubclass(uid_to_service_class(class_uid), StorageServiceClass)
            or not assoc.get_handlers(evt.EVT_C_STORE)
        ):
            return None
        syntax = str(context.transfer_syntax[0])
        digest = framed_digest(class_uid, instance_uid, syntax)
        return _Request(
            context, message_id, class_uid, instance_uid, priority, move_originator, syntax, digest
        )

    def _store(self, request: _Request, sock: socket.socket) -> None:
        """Run the EVT_C_STORE handler on *request* and answer it."""
        assoc = self.assoc
        if association_id.get() is None:  # log lines carry the association's id
            association_id.set(getattr(assoc, "_pacs_association_id", None))
        try:
            primitive = _primitive(request)
        except (ValueError, TypeError) as exc:  # pynetdicom would not decode it either
            log.warning("C-STORE request refused: %s", exc)
            status: Any = _status(0xC000, "cannot understand the request")
        else:
            # Not counted as idle while the handler runs: the peer waits for our answer.
            assoc.dul._idle_timer.stop()
            assoc.abort = assoc._abort_nonblocking  # as pynetdicom runs an SCP handler
            try:
                status = evt.trigger(
                    assoc,
                    evt.EVT_C_STORE,
                    {"request": primitive, "context": request.context.as_tuple},
                )
            except Exception:
                log.exception("exception in the handler bound to EVT_C_STORE")
                status = HANDLER_FAILED
            finally:
                assoc.abort = assoc._abort_blocking
            # A handler that aborted: its A-ABORT is queued for this thread, and no response
            # goes before it (pynetdicom's own SCP sends none either).
            if assoc._sent_abort or not assoc.is_established:
                return
        try:
            response = response_command(request, status)
        except (TypeError, ValueError, OverflowError) as exc:  # a status we cannot encode
            log.error("invalid status %r from the EVT_C_STORE handler: %s", status, exc)
            response = response_command(request, INVALID_STATUS)
        maximum = max_fragment(assoc.requestor.maximum_length)
        sock.sendall(command_pdus(request.context.context_id, response, maximum))


def response_command(request: _Request, status: Any) -> bytes:
    """The C-STORE-RSP command set (PS3.7 9.3.1.2) for *status*: an int, or a Dataset with
    Status and optionally ErrorComment and OffendingElement (as pynetdicom takes them)."""
    comment, offending = b"", b""
    if isinstance(status, Dataset):
        code = int(status.get("Status", 0xC001))
        if "ErrorComment" in status:
            comment = _padded(str(status.ErrorComment).encode("ascii", "replace")[:64])
        if "OffendingElement" in status:
            tags = status.OffendingElement  # AT, one value or several
            tags = [tags] if isinstance(tags, int) else list(tags)
            offending = b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
    elif isinstance(status, int):
        code = status
    else:
        code = INVALID_STATUS
    if not 0 <= code <= 0xFFFF:
        raise ValueError(f"status {code:#x} is not a 16-bit value")
    elements = [
        command_element(0x0002, uid_value(request.AffectedSOPClassUID)),
        command_element(0x0100, struct.pack("<H", C_STORE_RSP)),
        command_element(0x0120, struct.pack("<H", request.MessageID)),
        command_element(0x0800, NO_DATA_SET),
        command_element(0x0900, struct.pack("<H", code)),
    ]
    if offending:
        elements.append(command_element(0x0901, offending))
    if comment:
        elements.append(command_element(0x0902, comment))
    elements.append(command_element(0x1000, uid_value(request.AffectedSOPInstanceUID)))
    body = b"".join(elements)
    return command_element(0x0000, struct.pack("<L", len(body))) + body


def _status(code: int, comment: str) -> Dataset:
    reply = Dataset()
    reply.Status = code
    reply.ErrorComment = comment
    return reply


def _primitive(request: _Request) -> C_STORE:
    """The request primitive pynetdicom would have decoded (its setters validate)."""
    primitive = C_STORE()
    primitive.MessageID = request.MessageID
    primitive.AffectedSOPClassUID = request.AffectedSOPClassUID
    primitive.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    primitive.Priority = request.Priority
    if request.MoveOriginator is not None:
        title, message_id = request.MoveOriginator
        primitive.MoveOriginatorApplicationEntityTitle = title
        primitive.MoveOriginatorMessageID = message_id
    data = request.data
    primitive.DataSet = BytesIO(data[0] if len(data) == 1 else b"".join(data))
    # For the handler (pacs.dimse.handlers), beside what pynetdicom's primitive has.
    primitive.framed_digest = FramedDigest(  # type: ignore[attr-defined]
        request.AffectedSOPClassUID,
        request.AffectedSOPInstanceUID,
        request.TransferSyntaxUID,
        request.digest.hexdigest(),
    )
    return primitive


def _text(value: bytes) -> str:
    return value.decode("ascii").rstrip("\0 ").lstrip(" ")


def _padded(value: bytes) -> bytes:
    return value + b" " if len(value) % 2 else value


def _reframed(pdvs: list[tuple[int, int, memoryview]]) -> bytes:
    """PDV items as a P-DATA-TF PDU of their own."""
    items = b"".join(
        struct.pack(">LBB", len(value) + 2, context_id, control) + value
        for context_id, control, value in pdvs
    )
    return struct.pack(">BxL", P_DATA_TF, len(items)) + items


class ReceivingDUL(DULServiceProvider):
    """pynetdicom's DUL with its PDU reader taking C-STORE requests (:class:`StoreReceiver`)
    while the association is established (Sta6); everything else it reads as pynetdicom."""

    _pacs_receiver: StoreReceiver | None = None

    def _read_pdu_data(self) -> None:
        receiver = self._pacs_receiver
        if receiver is None or self.state_machine.current_state != "Sta6" or self.socket is None:
            super()._read_pdu_data()
            return
        raw = cast(socket.socket, self.socket.socket)
        header = bytearray(6)
        pdu, got = None, 0
        try:
            got = recv_into_all(raw, memoryview(header))
            if got == 6 and header[0] in _PDU_TYPES:
                length = struct.unpack_from(">L", header, 2)[0]
                if length > self._longest():
                    log.warning("PDU of %d bytes from %s refused", length, receiver.title)
                    self.event_queue.put("Evt19")
                    return
                pdu = bytearray(6 + length)
                pdu[:6] = header
                if recv_into_all(raw, memoryview(pdu)[6:]) != length:
                    pdu = None
        except OSError:  # a reset, or the kernel's receive timeout (EAGAIN)
            pdu = None
        if pdu is None:
            # pynetdicom's answers: an unknown PDU type is invalid, a short read a closed
            # connection.
            self.event_queue.put("Evt19" if got == 6 and header[0] not in _PDU_TYPES else "Evt17")
            return
        if pdu[0] != P_DATA_TF:
            self._to_pynetdicom(pdu)
            return
        try:
            for theirs in receiver.receive(pdu, raw):
                self._to_pynetdicom(theirs)
        except Invalid as exc:
            log.warning("invalid P-DATA-TF from %s: %s", receiver.title, exc)
            self.event_queue.put("Evt19")
        except OSError:  # the response could not be written
            self.event_queue.put("Evt17")
        except Exception:  # a bug of ours: the state machine aborts, the reactor goes on
            log.exception("C-STORE request from %s not handled", receiver.title)
            self.event_queue.put("Evt19")

    def _longest(self) -> int:
        """The longest PDU read while established: our maximum length (PS3.8 D.1), which a
        P-DATA-TF may not exceed, and at least 64 KiB (pynetdicom reads any length)."""
        maximum = int(self.assoc.acceptor.maximum_length or 0)
        return max(maximum, 1 << 16) if maximum else 1 << 32

    def _to_pynetdicom(self, pdu: bytes | bytearray) -> None:
        """What pynetdicom's reader does with a PDU it has read (PS3.8 9.2 events)."""
        try:
            decoded, event = self._decode_pdu(bytearray(pdu))
        except Exception:
            log.exception("unable to decode the received PDU")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(decoded)


def attach(assoc: Any, on_data: Callable[[Any], None]) -> None:
    """Take *assoc*'s C-STORE requests in its DUL thread (an acceptor's, before it starts)."""
    with contextlib.suppress(TypeError):  # another DUL class: leave it to pynetdicom
        assoc.dul.__class__ = ReceivingDUL
        assoc.dul._pacs_receiver = StoreReceiver(assoc, on_data)
