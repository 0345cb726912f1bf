"""C-STORE requests written by the sending thread straight to an association's socket.

pynetdicom sends a C-STORE through three threads: the caller builds the command set as a
pydicom data set and encodes it, reads the file into P-DATA primitives and queues them; the
DUL thread turns each into a PDU (two more copies) and writes it; the response comes back the
same way, decoded by pydicom, through two more queues. ~2 ms of CPU per instance on the
requestor, all of it between one response and the next request, so our SCU sent a third as
fast as dcmtk's storescu (bench/receive_path.py). Here the association is negotiated, released
and aborted by pynetdicom as before, but while C-STOREs go out the sending thread holds the
socket (``pacs.dimse.wakeups.socket_held``) and per instance:

- encodes the command set itself (PS3.7 9.3.1.1, Implicit VR Little Endian, PS3.7 6.3.1);
- writes each P-DATA-TF (PS3.8 9.3.5) as its 12-byte header and the file's bytes from the
  page cache (sendfile(2): no copy in Python), fragments no longer than the peer's maximum
  length (PS3.8 D.1), with blocking calls under the kernel's timeouts (no poll before each);
- reads the response PDU and decodes the few command elements it needs (PS3.7 9.3.1.2).

A PDU other than P-DATA-TF (the peer aborts or asks to release) is left unread for pynetdicom,
which handles it once the socket is given back.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs.dimse import wakeups

# PS3.8 9.3.1: PDU types.
P_DATA_TF = 0x04
# PS3.8 E.2: message control header bits of a PDV.
COMMAND, LAST = 0x01, 0x02
# PS3.7 E.1: command fields.
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
# PS3.7 E.1: CommandDataSetType "a data set is present" (any value but 0101H).
DATA_SET_PRESENT = 0x0000
# PS3.7 9.1.1.1.4: priority LOW, pynetdicom's default for send_c_store().
PRIORITY_LOW = 0x0002
# Largest response PDU we read: a C-STORE-RSP command set is a few hundred bytes.
MAX_RESPONSE_PDU = 1 << 20

# Only Linux coalesces a header written with MSG_MORE with the data that follows it.
_MORE = getattr(socket, "MSG_MORE", 0)


class AssociationLost(ConnectionError):
    """No response on the association: the peer aborted or released it, broke the protocol,
    the connection closed or a timeout ran out. The association cannot be used any more."""


@dataclass(frozen=True)
class StoreResponse:
    """What a C-STORE-RSP says (PS3.7 9.3.1.2)."""

    Status: int
    ErrorComment: str = ""


def command_set(SOPClassUID: str, SOPInstanceUID: str, MessageID: int) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1) in Implicit VR Little Endian, elements in
    ascending tag order, group length first (PS3.7 6.3.1, PS3.5 7.2)."""
    elements = b"".join(
        (
            command_element(0x0002, uid_value(SOPClassUID)),
            command_element(0x0100, struct.pack("<H", C_STORE_RQ)),
            command_element(0x0110, struct.pack("<H", MessageID)),
            command_element(0x0700, struct.pack("<H", PRIORITY_LOW)),
            command_element(0x0800, struct.pack("<H", DATA_SET_PRESENT)),
            command_element(0x1000, uid_value(SOPInstanceUID)),
        )
    )
    return command_element(0x0000, struct.pack("<L", len(elements))) + elements


def command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def uid_value(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b"\0" if len(encoded) % 2 else encoded


def parse_command(command: bytes) -> dict[int, bytes]:
    """The elements of an Implicit VR Little Endian command set, by element number.

    Raises
    ------
    ValueError
        The command set is cut off, or holds an element of another group than 0000.
    """
    elements, pos = {}, 0
    while pos < len(command):
        if pos + 8 > len(command):
            raise ValueError("command element cut off")
        group, element, length = struct.unpack_from("<HHL", command, pos)
        pos += 8
        if group != 0x0000 or pos + length > len(command):
            raise ValueError("malformed command set")
        elements[element] = command[pos : pos + length]
        pos += length
    return elements


class DirectStores:
    """C-STORE over an established association whose socket the calling thread holds.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        Established, and attached by ``pacs.dimse.wakeups.attach``.
    timeout : float
        Seconds a write may block and a response may take (the DIMSE and network timeouts).

    Use it as a context manager: the socket is held from entry to exit.
    """

    def __init__(self, assoc: Any, timeout: float) -> None:
        self.assoc = assoc
        self.timeout = timeout
        self.max_fragment = max_fragment(assoc.acceptor.maximum_length)
        self._message_id = 0
        self._held: contextlib.ExitStack | None = None
        self._sock: socket.socket | None = None

    def __enter__(self) -> DirectStores:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(wakeups.socket_held(self.assoc, self.timeout))
            # Blocking calls under the kernel's timeouts while held: Python's own timeout
            # (pynetdicom sets one) polls before every send and receive.
            previous = sock.gettimeout()
            sock.settimeout(None)
            stack.callback(sock.settimeout, previous)
            _kernel_timeouts(sock, self.timeout)
            stack.callback(_kernel_timeouts, sock, 0.0)
            self._sock, self._held = sock, stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        held, self._held, self._sock = self._held, None, None
        if held is not None:
            held.close()

    def store(
        self, path: Path, offset: int, context_id: int, SOPClassUID: str, SOPInstanceUID: str
    ) -> StoreResponse:
        """C-STORE the data set at *offset* in the file at *path*, as it is, on the
        presentation context *context_id*; return the response.

        Raises
        ------
        OSError
            The file cannot be read (nothing was sent: the association is still usable).
        AssociationLost
            See the class; the association must be aborted (or is gone).
        """
        sock = self._sock
        if sock is None:
            raise RuntimeError("DirectStores used outside its with block")
        self._message_id = self._message_id % 0xFFFF + 1
        fd = os.open(path, os.O_RDONLY)
        try:
            length = os.fstat(fd).st_size - offset
            if length < 0:
                raise OSError(f"{path}: shorter than its data set offset")
            try:
                command = command_set(SOPClassUID, SOPInstanceUID, self._message_id)
                sock.sendall(command_pdus(context_id, command, self.max_fragment), _MORE)
                for start, size in fragments(length, self.max_fragment):
                    control = LAST if start + size == length else 0
                    sock.sendall(pdata_header(context_id, control, size), _MORE)
                    _send_file(sock, fd, offset + start, size, path)
            except AssociationLost:
                raise
            except OSError as exc:
                raise AssociationLost(f"C-STORE request not sent: {_reason(exc)}") from exc
        finally:
            os.close(fd)
        return self._response(context_id)

    def _response(self, context_id: int) -> StoreResponse:
        """Read P-DATA-TF PDUs until the response's command set is complete."""
        fragments = []
        last = False
        while not last:
            for pdv_context, control, value in self._read_pdata():
                if pdv_context != context_id or not control & COMMAND or last:
                    raise AssociationLost("unexpected P-DATA from the peer (not our C-STORE-RSP)")
                fragments.append(value)
                last = bool(control & LAST)
        self.assoc.dul._idle_timer.restart()  # pynetdicom's network timeout: traffic was seen
        try:
            elements = parse_command(b"".join(fragments))
        except ValueError as exc:
            raise AssociationLost(f"malformed C-STORE response: {exc}") from exc
        field = elements.get(0x0100, b"")
        responded = elements.get(0x0120, b"")
        if field != struct.pack("<H", C_STORE_RSP) or responded != struct.pack(
            "<H", self._message_id
        ):
            raise AssociationLost("the peer answered with another message than our C-STORE-RSP")
        if len(elements.get(0x0900, b"")) != 2:
            raise AssociationLost("C-STORE response without a Status")
        status = struct.unpack("<H", elements[0x0900])[0]
        comment = elements.get(0x0902, b"").rstrip(b" \0").decode("latin-1")
        return StoreResponse(status, comment)

    def _read_pdata(self) -> list[tuple[int, int, bytes]]:
        """The PDVs of the next PDU, which must be a P-DATA-TF: anything else is left in the
        socket for pynetdicom."""
        sock = self._sock
        assert sock is not None
        try:
            # Look before taking: the header says the PDU's type and length.
            header = sock.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
            if header[:1] != bytes((P_DATA_TF,)):
                raise AssociationLost(
                    f"no C-STORE response: the peer sent PDU type 0x{header[0]:02X}"
                    if header
                    else "no C-STORE response: the connection closed"
                )
            if len(header) < 6:
                raise AssociationLost("no C-STORE response: the connection closed mid-PDU")
            length = struct.unpack_from(">L", header, 2)[0]
            if length > MAX_RESPONSE_PDU:
                raise AssociationLost(f"P-DATA-TF of {length} bytes in answer to a C-STORE")
            pdu = _recv_exactly(sock, 6 + length)
        except AssociationLost:
            raise
        except OSError as exc:
            raise AssociationLost(f"no C-STORE response: {_reason(exc)}") from exc
        pdvs = pdv_items(pdu)
        if pdvs is None:
            raise AssociationLost("malformed P-DATA-TF from the peer")
        return [(context_id, control, bytes(value)) for context_id, control, value in pdvs]


def pdv_items(pdu: bytes | bytearray) -> list[tuple[int, int, memoryview]] | None:
    """The PDV items (presentation context id, message control header, value) of a whole
    P-DATA-TF PDU, or None when they do not fill it exactly (PS3.8 9.3.5, E.2)."""
    view = memoryview(pdu)
    end, pos, items = len(pdu), 6, []
    while pos < end:
        if pos + 6 > end:
            return None
        length, context_id, control = struct.unpack_from(">LBB", pdu, pos)
        if length < 2 or pos + 4 + length > end:
            return None
        items.append((context_id, control, view[pos + 6 : pos + 4 + length]))
        pos += 4 + length
    return items


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO and SO_SNDTIMEO of *sock* (0: none): a blocking call that waits longer
    fails with EAGAIN."""
    value = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _reason(exc: OSError) -> str:
    if isinstance(exc, BlockingIOError):  # EAGAIN: a kernel timeout ran out
        return "timed out"
    return str(exc)


def _send_file(sock: socket.socket, fd: int, offset: int, count: int, path: Path) -> None:
    """Write *count* bytes of the file *fd* from *offset* to *sock*: by sendfile(2), from the
    page cache to the socket without a copy through Python, where the system has it."""
    end = offset + count
    while offset < end:
        if _HAS_SENDFILE:
            sent = os.sendfile(sock.fileno(), fd, offset, end - offset)
        else:
            chunk = os.pread(fd, min(end - offset, 1 << 20), offset)
            sock.sendall(chunk)
            sent = len(chunk)
        if not sent:
            raise AssociationLost(f"{path} changed while it was sent")
        offset += sent


_HAS_SENDFILE = hasattr(os, "sendfile")


def pdata_header(context_id: int, control: int, size: int) -> bytes:
    """A P-DATA-TF header with one PDV item of *size* value bytes (PS3.8 9.3.5, E.2)."""
    return struct.pack(">BxLLBB", P_DATA_TF, size + 6, size + 2, context_id, control)


def _recv_exactly(sock: socket.socket, count: int) -> bytearray:
    buffer = bytearray(count)
    if recv_into_all(sock, memoryview(buffer)) < count:
        raise AssociationLost("no C-STORE response: the connection closed")
    return buffer


def recv_into_all(sock: socket.socket, view: memoryview) -> int:
    """Read into *view* until it is full or the peer closed; return the bytes read."""
    received = 0
    while received < len(view):
        count = sock.recv_into(view[received:])
        if not count:
            break
        received += count
    return received


def max_fragment(maximum_length: int | None) -> int:
    """The longest PDV value a P-DATA-TF may carry to a peer whose maximum length is
    *maximum_length* (PS3.8 D.1: the PDV list, less a PDV item's 6 bytes of header); 0: no
    limit."""
    maximum = int(maximum_length or 0)
    return max(maximum - 6, 1) if maximum else 0


def fragments(length: int, max_fragment: int) -> Iterator[tuple[int, int]]:
    """(start, size) of each fragment of a value of *length* bytes (one, empty, for none)."""
    step = max_fragment if max_fragment > 0 else max(length, 1)
    for start in range(0, max(length, 1), step):
        yield start, min(step, length - start)


def command_pdus(context_id: int, command: bytes, max_fragment: int) -> bytes:
    """A command set as the P-DATA-TF PDUs that carry it, one fragment each, the last one
    flagged (PS3.8 E.2)."""
    return b"".join(
        pdata_header(context_id, COMMAND | (LAST if start + size == len(command) else 0), size)
        + command[start : start + size]
        for start, size in fragments(len(command), max_fragment)
    )
