"""Event-driven wake-ups of pynetdicom's reactors (pacs.dimse.wakeups): they only replace the
two reactor loops' sleeps, and a served association leaves no descriptor behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

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
