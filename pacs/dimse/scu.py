"""DIMSE service users: C-ECHO and C-STORE of files (``pacs echo``, ``pacs send``)."""

from __future__ import annotations

import functools
import logging
import mmap
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom import config as pydicom_config
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom._validators import validate_ui

from pacs.dimse import wakeups
from pacs.dimse.direct import AssociationLost, DirectStores
from pacs.errors import InvalidInstance
from pacs.part10 import locate

log = logging.getLogger(__name__)

VERIFICATION = UID("1.2.840.10008.1.1")  # PS3.4 A.4, Verification SOP Class
# PS3.8 9.3.2.2: at most 128 presentation contexts can be proposed on one association.
MAX_CONTEXTS = 128
# Uncompressed little endian: pynetdicom converts a data set between these two on sending.
UNCOMPRESSED_LE = frozenset((str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)))
# PS3.4 B.2.3: warnings are stored instances too.
WARNING_STATUSES = frozenset((0xB000, 0xB006, 0xB007))


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    called_aet: str
    calling_aet: str = "PACS_SCU"
    timeout: float = 30.0


@dataclass(frozen=True)
class Outgoing:
    """A file to C-STORE: its data set starts at *dataset_offset* and is sent as it is."""

    path: Path
    SOPClassUID: str
    SOPInstanceUID: str
    TransferSyntaxUID: str
    dataset_offset: int


@dataclass
class SendReport:
    sent: int = 0
    warnings: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # not DICOM -> reason

    @property
    def ok(self) -> bool:
        return not self.failed


def echo(peer: Peer) -> int:
    """Send one C-ECHO; return its status (raises ConnectionError without an association)."""
    ae = AE(ae_title=peer.calling_aet)
    ae.add_requested_context(VERIFICATION)
    assoc = _associate(ae, peer)
    try:
        reply = assoc.send_c_echo()
        if "Status" not in reply:
            raise ConnectionError("no C-ECHO response")
        return int(reply.Status)
    finally:
        assoc.release()


def find_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under *paths*, recursively, in a stable order."""
    for path in paths:
        if path.is_dir():
            for dirpath, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(dirpath) / name
        else:
            yield path


def scan(paths: Iterable[Path], report: SendReport) -> list[Outgoing]:
    """Read the header of every file and check that none of its elements is cut off; note
    those that are not DICOM in *report*."""
    outgoing = []
    for path in find_files(paths):
        try:
            located = locate(_contents(path))
            ds = located.read_dataset()
            sop_class, sop_instance = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
            if not sop_class or not sop_instance:
                raise InvalidInstance("no SOP Class UID or SOP Instance UID")
        except (InvalidInstance, OSError) as exc:
            report.skipped[str(path)] = str(exc)
            continue
        outgoing.append(
            Outgoing(
                path,
                str(sop_class),
                str(sop_instance),
                located.transfer_syntax_uid,
                located.dataset_offset,
            )
        )
    return outgoing


def _contents(path: Path) -> bytes:
    """The file's bytes, mapped rather than read: the check walks its element headers only, so
    the pages between them (the pixel data) are not read until the file is sent. The map is
    released with its last reference."""
    with path.open("rb") as file:
        try:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # empty, or not a regular file
            return file.read()
    # locate() reads it as it reads bytes: slices, memoryview, struct.unpack_from.
    return cast(bytes, mapped)


def send(
    files: list[Outgoing],
    peer: Peer,
    report: SendReport,
    associations: int = 1,
    on_done: Callable[[Outgoing, int | None], None] | None = None,
) -> SendReport:
    """C-STORE *files* over up to *associations* parallel associations.

    Each file is sent in its own transfer syntax, its data set as it is on disk
    (``pacs.dimse.direct``).
    """
    for group in _context_groups(files):
        _send_group(group, peer, report, associations, on_done)
    return report


def _send_group(
    group: list[Outgoing],
    peer: Peer,
    report: SendReport,
    associations: int,
    on_done: Callable[[Outgoing, int | None], None] | None,
) -> None:
    pending: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()
    for item in group:
        pending.put(item)
    contexts = sorted({(f.SOPClassUID, f.TransferSyntaxUID) for f in group})
    lock = threading.Lock()

    def record(item: Outgoing, code: int | None, reason: str = "") -> None:
        with lock:
            if code is not None and (code == 0 or code in WARNING_STATUSES):
                report.sent += 1
                report.warnings += code != 0
            else:
                report.failed[str(item.path)] = reason or f"status 0x{code or 0:04X}"
        if on_done is not None:
            on_done(item, code)

    def worker() -> None:
        ae = AE(ae_title=peer.calling_aet)
        for sop_class, transfer_syntax in contexts:
            ae.add_requested_context(sop_class, transfer_syntax)
        try:
            assoc = _associate(ae, peer)
        except ConnectionError:
            return  # another worker may still get through; leftovers are failed below
        lost = False
        try:
            with DirectStores(assoc, peer.timeout) as stores:
                while True:
                    try:
                        item = pending.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        code, reason = _store_one(stores, assoc, item)
                    except AssociationLost as exc:
                        lost = True
                        record(item, None, str(exc))
                        break
                    record(item, code, reason)
        except ConnectionError as exc:  # the socket could not be held: the connection closed
            lost = True
            log.warning("association with %s lost: %s", peer.called_aet, exc)
        finally:
            if lost:
                _abort(assoc)
            elif assoc.is_established:
                assoc.release()

    threads = [
        threading.Thread(target=worker, name=f"scu-{i}")
        for i in range(max(1, min(associations, len(group))))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    while not pending.empty():
        record(pending.get_nowait(), None, "association rejected or lost")


def _abort(assoc: Any) -> None:
    """A-ABORT *assoc*, as pynetdicom does when a response does not come, and close its socket:
    pynetdicom (3.0.4) leaves it open when the peer closed the connection first (its
    shutdown() fails, and the close() after it is skipped)."""
    sock = getattr(assoc.dul.socket, "socket", None)
    assoc.abort()
    if sock is not None:
        sock.close()  # a no-op when pynetdicom closed it


def _store_one(stores: DirectStores, assoc: Any, item: Outgoing) -> tuple[int | None, str]:
    """C-STORE *item*: (status, error comment), or (None, reason) when it was not sent."""
    try:
        context = assoc._get_valid_context(
            item.SOPClassUID, item.TransferSyntaxUID, "scu", allow_conversion=False
        )
        reply = stores.store(
            item.path,
            item.dataset_offset,
            int(context.context_id),
            item.SOPClassUID,
            item.SOPInstanceUID,
        )
    except AssociationLost:
        raise  # the association is gone: the caller fails the rest
    except (OSError, ValueError) as exc:  # not readable, or no accepted context: not sent
        return None, str(exc)
    return reply.Status, reply.ErrorComment


def quiet_diagnostics() -> None:
    """Skip per-association and per-message work whose only product is log lines:

    - pynetdicom's standard handlers, bound to new associations only when its logger shows
      INFO: they format every PDU and DIMSE message, the A-ASSOCIATE-RQ and -AC with every
      presentation context, for lines dropped at the WARNING level ``pacs.logs`` sets (~8% of
      an association's set-up in the server);
    - pydicom's validation of every value it reads (``reading_validation_mode``): each of the
      ~400 UIDs of a storescu A-ASSOCIATE-RQ, each command set's, each attribute read, matched
      against its VR's pattern to log a warning, never to refuse (~25% of an association's
      set-up). What is refused is decided by ``pacs.uids`` and ``pacs.instance``;
    - pynetdicom's check of each of those UIDs, repeated for every association (each call
      imports its configuration again: ~10% of a storescu association's set-up): each UID's
      verdict is kept (:func:`validate_ui_once`), the same verdict, decided once.
    """
    shown = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if shown else "none"
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    _config.VALIDATORS["UI"] = validate_ui_once


def validate_ui_once(value: Any) -> tuple[bool, str]:
    """pynetdicom's UID validation (``_config.VALIDATORS["UI"]``), its verdict kept for the
    UIDs the standard defines (SOP classes, transfer syntaxes...: what every association
    proposes again). Others (instance UIDs, a peer's made-up or oversized ones) are checked
    each time, and never fill the cache."""
    if not isinstance(value, str) or value not in UID_dictionary:
        return validate_ui(value)
    return _ui_verdict(str(value), _config.ENFORCE_UID_CONFORMANCE)


@functools.lru_cache(maxsize=2048)  # at most the standard's UIDs, twice
def _ui_verdict(value: str, _enforced: bool) -> tuple[bool, str]:
    return validate_ui(UID(value))


def _associate(ae: AE, peer: Peer) -> Any:
    quiet_diagnostics()
    ae.acse_timeout = peer.timeout
    ae.dimse_timeout = peer.timeout
    ae.network_timeout = peer.timeout
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"association with {peer.called_aet}@{peer.host}:{peer.port} failed")
    set_nodelay(assoc)
    guard_responses(assoc)
    wakeups.attach(assoc)
    return assoc


def guard_responses(assoc: Any) -> None:
    """Let only the send_*() call waiting for a DIMSE response take it off the queue.

    pynetdicom (3.0.4) pauses a requestor's reactor thread while a send_*() method waits for
    the response, but the pause can be missed: the reactor marks itself paused just before it
    waits on the pause, so a send_*() that starts in that instant goes ahead while the reactor
    runs one more loop and polls the DIMSE queue. A response already there is taken and dropped
    by the reactor ("Received unexpected C-STORE-RSP service message"); the send_*() waits for
    its DIMSE timeout while the peer, having answered, waits for the next request, until one
    side's timeout aborts the association. Rare on an idle machine, common under load
    (thread switches land in the window): 11 of 10,000 fuzzing C-STOREs at a load average
    of 18. The reactor polls without blocking, a send_*() blocks: responses are left for the
    latter (and so are the empty items pynetdicom queues to wake it when the connection ends).
    Our requestors have one request in flight at a time and abort the association after a
    DIMSE timeout, so a response can never be taken by a later request.
    """
    dimse = assoc.dimse
    take = dimse.get_msg
    pending = dimse.msg_queue

    def get_msg(block: bool = False) -> Any:
        if block:
            return take(block)
        # Look and take under the queue's lock: a response arriving in between stays put.
        with pending.mutex:
            if pending.queue and getattr(pending.queue[0][1], "is_valid_request", False):
                return pending.queue.popleft()
        return None, None

    dimse.get_msg = get_msg


def set_nodelay(assoc: Any) -> None:
    """Disable Nagle's algorithm on an association's socket: DIMSE is request/response and
    otherwise stalls ~40 ms per message on delayed ACKs."""
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _context_groups(files: list[Outgoing]) -> Iterator[list[Outgoing]]:
    """Split *files* so that no group needs more than MAX_CONTEXTS presentation contexts."""
    by_context: dict[tuple[str, str], list[Outgoing]] = {}
    for item in files:
        by_context.setdefault((item.SOPClassUID, item.TransferSyntaxUID), []).append(item)
    keys = sorted(by_context)
    for start in range(0, len(keys), MAX_CONTEXTS):
        yield [item for key in keys[start : start + MAX_CONTEXTS] for item in by_context[key]]
