"""pacs.dimse.receive: C-STORE requests taken by the DUL thread from the association's socket.

The server is ours (``make_servers`` on an embedded archive, in this process); the requestor is
pynetdicom's, and where a test needs PDUs pynetdicom would not write (a command and its data
set in one PDU, two messages in one PDU, broken fragments) it writes them itself on the
association's socket (``pacs.dimse.wakeups.socket_held``).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import threading
from collections.abc import Iterator
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP as C_STORE_RSP_MESSAGE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from pacs import ingest
from pacs.dimse import receive, status, wakeups
from pacs.dimse.direct import (
    COMMAND,
    LAST,
    command_element,
    command_set,
    parse_command,
    pdv_items,
    uid_value,
)
from pacs.dimse.server import Listener, make_servers
from pacs.index.schema import instance
from pacs.ingest import Archive
from pacs.part10 import locate
from tests.servers import DATA, free_port, wait_for

CT = DATA / "edge-cases" / "CT_small.dcm"  # Explicit VR Little Endian
C_ECHO_RQ, C_ECHO_RSP, C_STORE_RSP = 0x0030, 0x8030, 0x8001
A_ABORT = 0x07


class Served:
    """Our DIMSE server in this process, counting the P-DATA-TF PDUs pynetdicom decoded."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.port = free_port()
        [self.server] = make_servers(archive, "127.0.0.1", [Listener(self.port)], "PACS")
        self.pdata_decoded = 0
        self.server.bind(evt.EVT_PDU_RECV, self._on_pdu)

    def _on_pdu(self, event: Any) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            self.pdata_decoded += 1

    def stored(self) -> dict[str, bytes]:
        """Each stored instance's data set, by SOP Instance UID."""
        with self.archive.db.read() as conn:
            rows = conn.execute(select(instance.c.sop_instance_uid, instance.c.blob_key)).all()
        return {uid: _data_set(self.archive.blobs.get(key)) for uid, key in rows}


@pytest.fixture
def served(embedded_archive: Archive) -> Iterator[Served]:
    served = Served(embedded_archive)
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()
    thread.join(10)


def ct_data_set() -> tuple[str, bytes]:
    """A new SOP Instance UID and the CT's data set with it (Explicit VR Little Endian)."""
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return str(ds.SOPInstanceUID), _data_set(buffer.getvalue())


def _data_set(part10: bytes) -> bytes:
    located = locate(part10)
    return located.data[located.dataset_offset :]


def pdv(context_id: int, control: int, value: bytes) -> bytes:
    return struct.pack(">LBB", len(value) + 2, context_id, control) + value


def pdu(*items: bytes) -> bytes:
    body = b"".join(items)
    return struct.pack(">BxL", 0x04, len(body)) + body


def echo_command(message_id: int) -> bytes:
    elements = b"".join(
        (
            command_element(0x0002, uid_value(Verification)),
            command_element(0x0100, struct.pack("<H", C_ECHO_RQ)),
            command_element(0x0110, struct.pack("<H", message_id)),
            command_element(0x0800, struct.pack("<H", 0x0101)),
        )
    )
    return command_element(0x0000, struct.pack("<L", len(elements))) + elements


@contextlib.contextmanager
def raw(served: Served, max_pdu: int = 16384) -> Iterator[tuple[socket.socket, int, int]]:
    """An association (CT storage and verification) whose socket the test writes and reads:
    yields it with the two contexts' ids."""
    ae = AE(ae_title="RAW")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", served.port, ae_title="PACS", max_pdu=max_pdu)
    assert assoc.is_established
    ids = {str(c.abstract_syntax): c.context_id for c in assoc.accepted_contexts}
    wakeups.attach(assoc)
    held = None
    try:
        with wakeups.socket_held(assoc, 10) as sock:
            held = sock
            sock.settimeout(10)
            yield sock, ids[CTImageStorage], ids[Verification]
            sock.settimeout(None)
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
        if held is not None:  # pynetdicom drops the socket of an aborted one unclosed
            held.close()


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU's type and whole bytes (type 0: the connection closed)."""
    header = _read(sock, 6)
    if len(header) < 6:
        return 0, header
    return header[0], header + _read(sock, struct.unpack_from(">L", header, 2)[0])


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def responses(sock: socket.socket, count: int) -> list[dict[int, bytes]]:
    """The next *count* response command sets, each from its fragments."""
    found, fragments = [], b""
    while len(found) < count:
        kind, whole = read_pdu(sock)
        assert kind == 0x04, f"PDU type 0x{kind:02X} instead of a response"
        for _, control, value in pdv_items(whole) or []:
            assert control & COMMAND
            fragments += bytes(value)
            if control & LAST:
                found.append(parse_command(fragments))
                fragments = b""
    return found


def field(elements: dict[int, bytes], element: int) -> int:
    return int(struct.unpack("<H", elements[element])[0])


def test_the_dul_reader_is_still_where_the_receiver_expects() -> None:
    # A pynetdicom upgrade that stops reading PDUs through _read_pdu_data, or renames what
    # the receiver uses, would turn it off or break it: then this fails.
    assert "_read_pdu_data" in DULServiceProvider._is_transport_event.__code__.co_names
    for name in ("_decode_pdu", "_read_pdu_data"):
        assert callable(getattr(DULServiceProvider, name))
    for name in ("_abort_nonblocking", "_abort_blocking", "get_handlers"):
        assert callable(getattr(Association, name))
    dul = DULServiceProvider(Association(AE(), "acceptor"))
    for name in ("_recv_pdu", "event_queue", "_idle_timer", "state_machine"):
        assert hasattr(dul, name)


@pytest.mark.parametrize("offending", [None, [0x00100010], [0x00100010, 0x00080018]])
def test_the_response_is_what_pynetdicom_encodes(offending: list[int] | None) -> None:
    request = receive._Request(None, 7, CTImageStorage, "1.2.3.4.5", 2, None, "", None)
    reply = Dataset()
    reply.Status = 0xA900
    reply.ErrorComment = "data set is not what the request announced"  # odd: padded
    if offending is not None:
        reply.OffendingElement = offending if len(offending) > 1 else offending[0]
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = "1.2.3.4.5"
    primitive.Status = 0xA900
    primitive.ErrorComment = reply.ErrorComment
    if offending is not None:
        primitive.OffendingElement = offending
    message = C_STORE_RSP_MESSAGE()
    message.primitive_to_message(primitive)
    expected = encode(message.command_set, True, True)
    assert receive.response_command(request, reply) == expected
    assert receive.response_command(request, 0) != expected


def test_a_store_from_pynetdicom_is_taken_by_the_dul_thread(served: Served) -> None:
    uid, data = ct_data_set()
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", served.port, ae_title="PACS")
    ds = pydicom.dcmread(BytesIO(data), force=True)
    ds.file_meta = pydicom.dcmread(CT).file_meta
    reply = assoc.send_c_store(ds)
    assoc.release()
    assert reply.Status == status.SUCCESS
    assert served.stored()[uid] == data
    assert served.pdata_decoded == 0  # no P-DATA-TF went through pynetdicom's decoder


def test_responses_are_fragmented_to_a_peer_of_small_pdus(served: Served) -> None:
    uid, data = ct_data_set()
    with raw(served, max_pdu=64) as (sock, ct, _):
        sock.sendall(pdu(pdv(ct, COMMAND | LAST, command_set(CTImageStorage, uid, 7))))
        sock.sendall(pdu(pdv(ct, LAST, data)))
        lengths = []
        fragments = b""
        while True:
            kind, whole = read_pdu(sock)
            assert kind == 0x04
            lengths.append(len(whole) - 6)
            [(_, control, value)] = pdv_items(whole) or []
            fragments += bytes(value)
            if control & LAST:
                break
    assert len(lengths) > 1 and max(lengths) <= 64
    reply = parse_command(fragments)
    assert field(reply, 0x0100) == C_STORE_RSP and field(reply, 0x0120) == 7
    assert field(reply, 0x0900) == status.SUCCESS
    assert reply[0x1000].rstrip(b"\0").decode() == uid
    assert served.stored()[uid] == data


def test_a_command_and_its_data_set_in_one_pdu(served: Served) -> None:
    uid, data = ct_data_set()
    with raw(served) as (sock, ct, _):
        command = command_set(CTImageStorage, uid, 1)
        sock.sendall(pdu(pdv(ct, COMMAND | LAST, command), pdv(ct, LAST, data)))
        [reply] = responses(sock, 1)
    assert field(reply, 0x0900) == status.SUCCESS
    assert served.stored()[uid] == data


def test_a_command_over_two_pdus_and_a_data_set_in_many(served: Served) -> None:
    uid, data = ct_data_set()
    with raw(served) as (sock, ct, _):
        command = command_set(CTImageStorage, uid, 2)
        sock.sendall(pdu(pdv(ct, COMMAND, command[:20])))
        sock.sendall(pdu(pdv(ct, COMMAND | LAST, command[20:])))
        pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
        for number, piece in enumerate(pieces):
            sock.sendall(pdu(pdv(ct, LAST if number == len(pieces) - 1 else 0, piece)))
        [reply] = responses(sock, 1)
    assert field(reply, 0x0120) == 2 and field(reply, 0x0900) == status.SUCCESS
    assert served.stored()[uid] == data
    assert served.pdata_decoded == 0


def test_the_blob_is_hashed_as_its_data_set_arrives(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def again(*_args: object) -> None:
        raise AssertionError("the blob was hashed again once it had arrived")

    monkeypatch.setattr(ingest, "hashlib", SimpleNamespace(sha256=again))
    uid, data = ct_data_set()
    with raw(served) as (sock, ct, _):
        sock.sendall(pdu(pdv(ct, COMMAND | LAST, command_set(CTImageStorage, uid, 5))))
        pieces = [data[i : i + 999] for i in range(0, len(data), 999)]
        for number, piece in enumerate(pieces):
            sock.sendall(pdu(pdv(ct, LAST if number == len(pieces) - 1 else 0, piece)))
        [reply] = responses(sock, 1)
    assert field(reply, 0x0900) == status.SUCCESS
    with served.archive.db.read() as conn:
        key, sha256 = conn.execute(
            select(instance.c.blob_key, instance.c.sha256).where(instance.c.sop_instance_uid == uid)
        ).one()
    assert hashlib.sha256(served.archive.blobs.get(key)).hexdigest() == sha256


def test_other_messages_go_to_pynetdicom_even_in_the_pdu_of_a_store(served: Served) -> None:
    first, first_data = ct_data_set()
    second, second_data = ct_data_set()
    with raw(served) as (sock, ct, verification):
        # An echo alone, then an echo and a store in one PDU, then a store alone: pynetdicom
        # answers what it decoded (the whole second PDU), the receiver the last store.
        sock.sendall(pdu(pdv(verification, COMMAND | LAST, echo_command(1))))
        [echoed] = responses(sock, 1)
        sock.sendall(
            pdu(
                pdv(verification, COMMAND | LAST, echo_command(2)),
                pdv(ct, COMMAND | LAST, command_set(CTImageStorage, first, 3)),
                pdv(ct, LAST, first_data),
            )
        )
        both = responses(sock, 2)
        decoded = served.pdata_decoded
        sock.sendall(pdu(pdv(ct, COMMAND | LAST, command_set(CTImageStorage, second, 4))))
        sock.sendall(pdu(pdv(ct, LAST, second_data)))
        [stored] = responses(sock, 1)
    assert field(echoed, 0x0100) == C_ECHO_RSP and field(echoed, 0x0900) == status.SUCCESS
    assert sorted((field(r, 0x0100), field(r, 0x0120), field(r, 0x0900)) for r in both) == [
        (C_STORE_RSP, 3, status.SUCCESS),
        (C_ECHO_RSP, 2, status.SUCCESS),
    ]
    assert field(stored, 0x0120) == 4 and field(stored, 0x0900) == status.SUCCESS
    assert decoded == 2 and served.pdata_decoded == 2  # the last store was not decoded
    assert served.stored()[first] == first_data
    assert served.stored()[second] == second_data


def test_a_message_of_pynetdicom_over_several_pdus_is_handed_on_whole(served: Served) -> None:
    uid, data = ct_data_set()
    with raw(served) as (sock, ct, verification):
        echo = echo_command(11)
        sock.sendall(pdu(pdv(verification, COMMAND, echo[:10])))
        sock.sendall(pdu(pdv(verification, COMMAND, echo[10:30])))
        sock.sendall(
            pdu(
                pdv(verification, COMMAND | LAST, echo[30:]),
                pdv(ct, COMMAND | LAST, command_set(CTImageStorage, uid, 12)),
            )
        )
        sock.sendall(pdu(pdv(ct, LAST, data)))
        replies = responses(sock, 2)
    # In either order: the store went out before the echo was answered (module docstring).
    assert sorted((field(r, 0x0100), field(r, 0x0120), field(r, 0x0900)) for r in replies) == [
        (C_STORE_RSP, 12, status.SUCCESS),
        (C_ECHO_RSP, 11, status.SUCCESS),
    ]
    assert served.pdata_decoded == 3  # the echo's three PDUs (the last one cut before the store)
    assert served.stored()[uid] == data


def test_a_refusal_is_answered_with_its_status_and_comment(served: Served) -> None:
    uid, data = ct_data_set()
    with raw(served) as (sock, ct, _):
        # The command announces another SOP Instance UID than the data set's.
        sock.sendall(pdu(pdv(ct, COMMAND | LAST, command_set(CTImageStorage, "1.2.3.4", 5))))
        sock.sendall(pdu(pdv(ct, LAST, data)))
        [reply] = responses(sock, 1)
    assert field(reply, 0x0900) == status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert reply[0x0902].startswith(b"data set is")  # the ErrorComment, cut at 64
    assert reply[0x1000].rstrip(b"\0") == b"1.2.3.4"
    assert uid not in served.stored()


@pytest.mark.parametrize(
    "broken",
    [
        # A data set fragment on another presentation context than its command's.
        lambda ct, verification, data: pdu(pdv(verification, LAST, data)),
        # A command fragment where the data set goes on.
        lambda ct, verification, data: pdu(pdv(ct, COMMAND | LAST, echo_command(9))),
        # A PDV item longer than its PDU.
        lambda ct, verification, data: pdu(struct.pack(">LBB", len(data) + 99, ct, 0) + data),
        # A PDU longer than our maximum length (1 MiB): refused before it is read.
        lambda ct, verification, data: struct.pack(">BxL", 0x04, 2 << 20) + data,
    ],
    ids=["other-context", "command-in-data", "short-items", "over-maximum"],
)
def test_broken_pdus_inside_a_store_abort_the_association(served: Served, broken: Any) -> None:
    uid, data = ct_data_set()
    with raw(served) as (sock, ct, verification):
        sock.sendall(pdu(pdv(ct, COMMAND | LAST, command_set(CTImageStorage, uid, 1))))
        sock.sendall(pdu(pdv(ct, 0, data[:100])))
        with contextlib.suppress(ConnectionError):  # refused before all of it was read
            sock.sendall(broken(ct, verification, data[100:]))
        kind, _ = read_pdu(sock)
    assert kind in (A_ABORT, 0)  # an A-ABORT, or the connection closed
    assert uid not in served.stored()
    wait_for(lambda: not served.server.active_associations, 10, "the aborted association gone")
    # The server goes on serving.
    with raw(served) as (sock, ct, _):
        sock.sendall(pdu(pdv(ct, COMMAND | LAST, command_set(CTImageStorage, uid, 1))))
        sock.sendall(pdu(pdv(ct, LAST, data)))
        [reply] = responses(sock, 1)
    assert field(reply, 0x0900) == status.SUCCESS
