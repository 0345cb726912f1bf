"""pacs.dimse.direct: C-STOREs written by ``pacs send``'s thread on the association's socket.

The peer is pynetdicom's own storage SCP (a real acceptor, in this process), so that what it
received, in which PDUs, and how it answers can be looked at and chosen per test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from pacs.dimse.direct import command_set
from pacs.dimse.scu import Peer, SendReport, scan, send
from tests.servers import DATA, free_port

EDGE = DATA / "edge-cases"
# A Part 10 file, a bare data set (no meta: framed by its offset 0), a deflated data set.
FILES = [EDGE / "CT_small.dcm", EDGE / "ExplVR_LitEndNoMeta.dcm", EDGE / "image_dfl.dcm"]
SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
]
MAX_PDU = 4096  # the peer's: a CT slice goes out in ~40 P-DATA-TF PDUs


class StorageSCP:
    """pynetdicom's storage SCP on a free loopback port; *answer* decides each response."""

    def __init__(self, answer: Callable[[Any, int], Any], max_pdu: int = MAX_PDU) -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.pdata_lengths: list[int] = []
        self.ae = AE(ae_title="PEER")
        self.ae.maximum_pdu_size = max_pdu
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(str(context.abstract_syntax), SYNTAXES)
        self.port = free_port()

    def on_store(self, event: Any) -> Any:
        self.received.append(bytes(event.request.DataSet.getvalue()))
        return self.answer(event, len(self.received))

    def on_pdu(self, event: Any) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            self.pdata_lengths.append(len(event.pdu.encode()) - 6)

    def __enter__(self) -> StorageSCP:
        handlers: list[Any] = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_PDU_RECV, self.on_pdu)]
        server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        assert server is not None  # not blocking: the server is returned
        self.server = server
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def _send(paths: list[Path], port: int, timeout: float = 10.0) -> tuple[SendReport, list[Any]]:
    report = SendReport()
    outgoing = scan(paths, report)
    assert not report.skipped
    send(outgoing, Peer("127.0.0.1", port, "PEER", timeout=timeout), report)
    return report, outgoing


def test_the_command_set_is_what_pynetdicom_encodes() -> None:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.3.4.5"  # odd length: padded with NUL
    primitive.Priority = 2
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    message.command_set.CommandDataSetType = 0x0000  # pynetdicom sets it when it sends
    expected = encode(message.command_set, True, True)
    assert command_set("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", 7) == expected


def test_data_sets_arrive_as_stored_in_pdus_no_longer_than_the_peers_maximum() -> None:
    with StorageSCP(lambda event, n: 0x0000) as peer:
        report, outgoing = _send(FILES, peer.port)
    assert (report.sent, report.failed) == (3, {})
    by_size = sorted(peer.received, key=len)
    expected = sorted((f.path.read_bytes()[f.dataset_offset :] for f in outgoing), key=len)
    assert by_size == expected
    assert max(peer.pdata_lengths) == MAX_PDU  # full fragments, never longer
    assert len(peer.pdata_lengths) > 3 * 2  # fragmented: more than command + data per file


def test_a_command_set_longer_than_the_peers_maximum_is_fragmented_too() -> None:
    with StorageSCP(lambda event, n: 0x0000, max_pdu=64) as peer:
        report, outgoing = _send(FILES[:1], peer.port)
    assert (report.sent, report.failed) == (1, {})
    assert peer.received == [FILES[0].read_bytes()[outgoing[0].dataset_offset :]]
    assert max(peer.pdata_lengths) == 64


def test_a_refusal_is_reported_with_its_status_and_comment() -> None:
    def refuse(event: Any, n: int) -> Dataset:
        status = Dataset()
        status.Status = 0xA700
        status.ErrorComment = "disk full"
        return status

    with StorageSCP(refuse) as peer:
        report, _ = _send(FILES[:1], peer.port)
    assert report.failed == {str(FILES[0]): "disk full"}


def test_a_peer_that_aborts_midway_fails_that_file_and_the_rest() -> None:
    def abort_second(event: Any, n: int) -> int:
        if n == 2:
            event.assoc.abort()
        return 0x0000

    copies = FILES[:1] * 4
    with StorageSCP(abort_second) as peer:
        started = time.monotonic()
        report, _ = _send(copies, peer.port)
        assert time.monotonic() - started < 5  # not a timeout: the A-ABORT is read
    assert report.sent == 1
    assert len(report.failed) == 1  # the same path four times: the last reason
    (reason,) = report.failed.values()
    assert "association rejected or lost" in reason


def test_the_abort_is_left_to_pynetdicom_and_the_reason_says_so() -> None:
    aborted = threading.Event()

    def abort_first(event: Any, n: int) -> int:
        event.assoc.abort()
        aborted.set()
        return 0x0000

    with StorageSCP(abort_first) as peer:
        report, _ = _send(FILES[:1], peer.port)
    assert aborted.is_set()
    (reason,) = report.failed.values()
    assert reason.startswith("no C-STORE response: ")
    assert "PDU type 0x07" in reason or "closed" in reason  # A-ABORT, or the FIN after it


def test_no_response_within_the_timeout_aborts_the_association() -> None:
    released = threading.Event()

    def stall(event: Any, n: int) -> int:
        released.wait(5)
        return 0x0000

    with StorageSCP(stall) as peer:
        started = time.monotonic()
        report, _ = _send(FILES[:1], peer.port, timeout=1.0)
        took = time.monotonic() - started
        released.set()
    assert took < 4
    (reason,) = report.failed.values()
    assert "timed out" in reason
