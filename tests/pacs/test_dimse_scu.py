"""pacs.dimse.scu: what ``scan`` skips; guard_responses: a C-STORE response goes to the
send_c_store() waiting for it, even when pynetdicom's association reactor misses its pause and
polls the DIMSE queue.

Found by fuzzing (bench/results/fuzz.json): under load a few C-STOREs in 10,000 got no
response, the archive having answered; the requestor's reactor had taken the response. The
missed pause is a matter of thread timing, so the test stands in for the reactor with a
thread that polls the queue the way it does (``get_msg(block=False)``) all the time, and lets
the sending thread lose the CPU for a moment before it waits for its response, as it does on
a loaded machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE

from pacs.dimse.scu import SendReport, guard_responses, scan
from pacs.errors import InvalidInstance
from pacs.part10 import locate
from tests.servers import DATA, PacsServer

INSTANCE = DATA / "edge-cases" / "CT_small.dcm"
DESCHEDULED = 1.0  # seconds the sending thread is off the CPU before it waits for a response


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    server = PacsServer(tmp_path_factory.mktemp("scu") / "home").start()
    yield server
    server.stop()


def _stores_beside_a_polling_reactor(port: int, guarded: bool, sends: int) -> tuple[int, int]:
    """C-STORE *sends* times while another thread polls the DIMSE queue without blocking;
    (responses received by send_c_store, messages the poller took)."""
    ds = pydicom.dcmread(INSTANCE)
    ae = AE(ae_title="SCU_TEST")
    ae.dimse_timeout = 1  # seconds a send_c_store() whose response was taken waits
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    wait_for_response = assoc.dimse.get_msg

    def descheduled(block: bool = False) -> Any:
        if block:
            time.sleep(DESCHEDULED)
        return wait_for_response(block)

    assoc.dimse.get_msg = descheduled
    if guarded:
        guard_responses(assoc)
    taken: list[Any] = []
    done = threading.Event()

    def poll() -> None:  # the reactor's loop, had it missed its pause
        while not done.is_set():
            _, msg = assoc.dimse.get_msg(block=False)
            if msg is not None:
                taken.append(msg)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        answered = sum("Status" in assoc.send_c_store(ds) for _ in range(sends))
    finally:
        done.set()
        poller.join()
        if assoc.is_established:
            assoc.release()
    return answered, len(taken)


def test_without_the_guard_the_reactor_takes_the_response(server: PacsServer) -> None:
    answered, taken = _stores_beside_a_polling_reactor(server.port, guarded=False, sends=1)
    assert (answered, taken) == (0, 1)


def test_the_guard_leaves_each_response_to_its_send(server: PacsServer) -> None:
    answered, taken = _stores_beside_a_polling_reactor(server.port, guarded=True, sends=3)
    assert (answered, taken) == (3, 0)


def test_scan_skips_what_whole_file_reading_would_refuse(tmp_path: Path) -> None:
    """scan() maps files and parses their headers only, but a file whose pixel data is cut
    off, or an empty one, is still skipped with the reason reading it whole gives."""
    truncated = DATA / "edge-cases" / "MR_truncated.dcm"
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    reasons = {}
    for path in (truncated, empty):
        with pytest.raises(InvalidInstance) as refused:
            locate(path.read_bytes())
        reasons[str(path)] = str(refused.value)
    report = SendReport()
    outgoing = scan([truncated, empty, INSTANCE], report)
    assert report.skipped == reasons
    assert "(7FE0,0010) declares 8192 bytes" in reasons[str(truncated)]
    assert [item.path for item in outgoing] == [INSTANCE]
