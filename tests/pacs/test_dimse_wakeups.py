"""Event-driven wake-ups of pynetdicom's reactors (pacs.dimse.wakeups): they only replace the
two reactor loops' sleeps, a served association leaves no descriptor behind, and another
thread can hold an association's socket while the DUL reactor parks."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul
from pynetdicom.sop_class import Verification

from pacs.dimse import status, wakeups
from tests.servers import PacsServer


def test_the_reactor_loops_still_sleep_where_the_wake_ups_expect() -> None:
    # A pynetdicom upgrade that moves the loops or stops calling time.sleep in them would
    # silently turn the wake-ups off: then this fails.
    for loop in wakeups.REACTOR_LOOPS:
        assert {"time", "sleep"} <= set(loop.co_names), loop.co_name


def test_only_the_reactor_loops_of_an_attached_thread_wait() -> None:
    wakeups.install()
    waits: list[str] = []
    slept: list[float] = []

    def run() -> None:
        threading.current_thread()._pacs_wait = lambda: waits.append("waited")  # type: ignore[attr-defined]
        start = time.monotonic()
        pynetdicom_association.time.sleep(0.02)  # not from a reactor loop: a real sleep
        slept.append(time.monotonic() - start)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert waits == [] and slept[0] >= 0.02
    # Both modules see the replaced sleep; everything else of `time` is the real thing.
    assert pynetdicom_dul.time.sleep is pynetdicom_association.time.sleep
    assert pynetdicom_dul.time.monotonic is time.monotonic


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    pacs = PacsServer(tmp_path_factory.mktemp("wakeups") / "home", {"PACS_RECEIVERS": "1"})
    pacs.start()
    yield pacs
    pacs.stop()


def _descriptors(pid: int) -> int:
    """The process's open pipes (each attached association holds one: 2 descriptors)."""
    return sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if _is_pipe(fd))


def _is_pipe(fd: Path) -> bool:
    try:
        return fd.readlink().name.startswith("pipe:")
    except OSError:  # closed while listing
        return False


def _associate(server: PacsServer) -> object:
    ae = AE(ae_title="WAKE")
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", server.port, ae_title="PACS")


def test_associations_released_or_aborted_leave_no_descriptor(server: PacsServer) -> None:
    assert server.process is not None
    pid = server.process.pid
    first = _associate(server)
    assert first.send_c_echo().Status == status.SUCCESS  # type: ignore[attr-defined]
    first.release()  # type: ignore[attr-defined]
    time.sleep(0.5)
    before = _descriptors(pid)
    for n in range(24):
        assoc = _associate(server)
        assert assoc.is_established  # type: ignore[attr-defined]
        assert assoc.send_c_echo().Status == status.SUCCESS  # type: ignore[attr-defined]
        assoc.abort() if n % 3 == 0 else assoc.release()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while _descriptors(pid) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _descriptors(pid) <= before + 2


def _thread_cpu(native_id: int) -> float:
    """CPU seconds of one thread of this process (``/proc/self/task/ID/stat``)."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_held_socket_is_left_alone_then_given_back(server: PacsServer) -> None:
    """While another thread holds the socket, the DUL reactor parks (no reads, no polling);
    afterwards pynetdicom uses the association as before; a closed one cannot be held."""
    assoc: Any = _associate(server)
    wakeups.attach(assoc)
    with wakeups.socket_held(assoc, timeout=5) as sock:
        with pytest.raises(RuntimeError, match="already held"), wakeups.socket_held(assoc, 5):
            pass
        cpu = _thread_cpu(assoc.dul.native_id)
        sock.sendall(ECHO_RQ)  # answered by the server, and left unread by the reactor
        time.sleep(0.5)
        assert sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"\x04"  # P-DATA-TF
        assert _thread_cpu(assoc.dul.native_id) - cpu < 0.05  # parked, not polling
        header = sock.recv(6, socket.MSG_WAITALL)
        sock.recv(int.from_bytes(header[2:], "big"), socket.MSG_WAITALL)
    assert assoc.send_c_echo().Status == status.SUCCESS
    assoc.abort()
    with pytest.raises(ConnectionError), wakeups.socket_held(assoc, timeout=1):
        pass


def _echo_rq() -> bytes:
    """A C-ECHO-RQ (PS3.7 9.3.5.1) on presentation context 1, as one P-DATA-TF."""
    command = b"".join(
        struct.pack("<HHL", 0x0000, element, len(value)) + value
        for element, value in (
            (0x0002, b"1.2.840.10008.1.1\0"),
            (0x0100, struct.pack("<H", 0x0030)),
            (0x0110, struct.pack("<H", 1)),
            (0x0800, struct.pack("<H", 0x0101)),
        )
    )
    command = struct.pack("<HHLL", 0x0000, 0x0000, 4, len(command)) + command
    return struct.pack(">BxLLBB", 0x04, len(command) + 6, len(command) + 2, 1, 0x03) + command


ECHO_RQ = _echo_rq()
