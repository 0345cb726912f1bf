"""Per-peer association limits and the idle timeout before the first P-DATA, against a real
`pacs serve` (pynetdicom and plain sockets as the peers; 127.0.0.2 as a second address)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs.dimse import status
from tests.servers import PacsServer

PER_PEER = 2
IDLE_TIMEOUT = 4.0  # seconds; long enough to open PER_PEER + 1 associations on a busy machine
NETWORK_TIMEOUT = 8.0  # PACS_NETWORK_TIMEOUT: longer than the idle timeout, as by default


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    pacs = PacsServer(
        tmp_path_factory.mktemp("limits") / "home",
        {
            "PACS_MAX_ASSOCIATIONS_PER_PEER": str(PER_PEER),
            "PACS_ASSOCIATION_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
            "PACS_NETWORK_TIMEOUT": str(NETWORK_TIMEOUT),
        },
    ).start()
    yield pacs
    pacs.stop()


def associate(server: PacsServer, address: str = "127.0.0.1", calling: str = "PEER") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", server.port, ae_title="PACS", bind_address=(address, 0))


def wait_until(condition: Any, timeout: float) -> float:
    """Seconds until *condition()* held (fails after *timeout*)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_peer_over_its_limit_is_rejected_while_others_get_in(server: PacsServer) -> None:
    """Rejected-transient by the service provider (presentation), local limit exceeded
    (PS3.8 9.3.4); counted by address, whatever AE titles it calls with."""
    start = time.monotonic()
    idle = [associate(server, calling=f"PEER{n}") for n in range(PER_PEER)]
    try:
        assert all(assoc.is_established for assoc in idle)
        over = associate(server, calling="ANOTHER")
        assert time.monotonic() - start < IDLE_TIMEOUT, "too slow to test the limit"
        assert over.is_rejected
        rejection = over.acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
        other = associate(server, address="127.0.0.2")
        assert other.is_established
        assert other.send_c_echo().Status == status.SUCCESS
        other.release()
    finally:
        for assoc in idle:
            assoc.release()
    # Their slots are free again once they are released (and the archive's threads ended).
    wait_until(lambda: establish(server), 5)


def establish(server: PacsServer) -> bool:
    """Whether an association from 127.0.0.1 is accepted now (released at once)."""
    assoc = associate(server)
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established


def test_a_silent_association_is_aborted_and_frees_its_slot(server: PacsServer) -> None:
    silent = associate(server)
    talking = associate(server)
    assert silent.is_established and talking.is_established
    assert talking.send_c_echo().Status == status.SUCCESS  # its first P-DATA
    waited = wait_until(lambda: silent.is_aborted, IDLE_TIMEOUT + 10)
    assert waited > IDLE_TIMEOUT / 2
    # After a P-DATA the network timeout (60 s) applies: the other lives on, and the slot of
    # the aborted one is free again.
    time.sleep(1)
    assert talking.is_established
    assert talking.send_c_echo().Status == status.SUCCESS
    wait_until(lambda: establish(server), 5)
    talking.release()


def test_a_connection_that_never_asks_to_associate_is_closed(server: PacsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=IDLE_TIMEOUT + 10) as sock:
        start = time.monotonic()
        assert sock.recv(1) == b""  # closed by the archive
        assert time.monotonic() - start < IDLE_TIMEOUT + 10


def test_a_peer_that_stalls_mid_pdu_is_dropped_after_the_network_timeout(
    server: PacsServer,
) -> None:
    """Regression: a P-DATA-TF whose header announces more bytes than ever come held the
    receiving thread in a blocking recv() (and the peer's association slot) for ever."""
    stalled = [associate(server, calling=f"STALL{n}") for n in range(PER_PEER)]
    assert all(assoc.is_established for assoc in stalled)
    start = time.monotonic()
    for assoc in stalled:
        assert assoc.send_c_echo().Status == status.SUCCESS  # past the idle timeout's reach
        # A P-DATA-TF PDU (type 0x04) announcing 1000 bytes, then 10 of them and silence.
        assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, 1000) + bytes(10))
    waited = wait_until(lambda: all(a.is_aborted for a in stalled), NETWORK_TIMEOUT + 10)
    assert time.monotonic() - start > NETWORK_TIMEOUT / 2 and waited < NETWORK_TIMEOUT + 10
    # Both of the peer's slots are free again.
    wait_until(lambda: establish(server), 5)
