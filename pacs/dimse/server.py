"""The DICOM (DIMSE) server: a pynetdicom AE accepting C-ECHO, C-STORE for every storage SOP
class in every transfer syntax (stored as received), and C-FIND on the Patient Root and Study
Root information models, C-MOVE to registered destinations and C-GET; on a plain port, a
TLS port (PS3.15 B.1), or both."""

from __future__ import annotations

import copy
import logging
import socket
import socketserver
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from pacs.dimse import receive, wakeups
from pacs.dimse.accept import BACKLOG, AcceptTurn, Loads
from pacs.dimse.access import AccessPolicy
from pacs.dimse.direct import recv_into_all
from pacs.dimse.find import FIND_MODELS, RETRIEVE_MODELS
from pacs.dimse.handlers import (
    handle_aborted,
    handle_accepted,
    handle_echo,
    handle_find,
    handle_get,
    handle_move,
    handle_store,
)
from pacs.dimse.limits import AssociationLimits, restore_network_timeout
from pacs.dimse.scu import UNCOMPRESSED_LE, VERIFICATION, quiet_diagnostics
from pacs.dimse.sends import Sends
from pacs.ingest import Archive
from pacs.logs import association_id, new_id

log = logging.getLogger(__name__)

# Transfer syntaxes pydicom does not list but modalities still send (PS3.5 Annex A, PS3.6
# Table A-1): retired JPEG processes, JPIP, encapsulated uncompressed, deflated frames. We store
# as received, so accepting them costs nothing.
EXTRA_TRANSFER_SYNTAXES = (
    *(f"1.2.840.10008.1.2.4.{n}" for n in (52, 53, 54, 55, 56, *range(58, 67), 94, 95)),
    "1.2.840.10008.1.2.1.98",
    "1.2.840.10008.1.2.8.1",
)
# Largest P-DATA PDU we accept: big PDUs mean fewer round trips through pynetdicom's reader.
MAXIMUM_PDU_SIZE = 1 << 20


@dataclass(frozen=True)
class Listener:
    """A port the DIMSE server binds, with the TLS context wrapping its connections (None:
    plain TCP)."""

    port: int
    ssl_context: ssl.SSLContext | None = None
    # The port's socket, bound by ``pacs serve`` and shared by its receiver processes
    # (pacs.dimse.accept); None: the server binds the port itself.
    shared: socket.socket | None = None
    # The receivers' published loads, and this process's slot in them (pacs.dimse.accept).
    loads: Loads | None = None
    slot: int = 0


class _ReceivingSocket(AssociationSocket):
    """pynetdicom's association socket, reading what it is asked for with as few recv() calls
    as the network allows: pynetdicom's own reads 4 KiB per call and grows a bytearray, ~130
    calls and copies for one CT slice."""

    def recv(self, nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        with memoryview(buffer) as view:
            received = recv_into_all(cast(socket.socket, self.socket), view)
        del buffer[received:]  # the peer closed: what arrived, as pynetdicom's recv() returns
        return buffer


class _SharedContexts(list[Any]):
    """The server's presentation contexts, given to each association as they are instead of
    pynetdicom's deep copy of them (177 contexts, 9,759 transfer syntaxes: ~50 ms of CPU per
    association). Negotiation only reads them; :func:`prefer_proposed_order` reorders copies
    and ``pacs.dimse.access`` filters the list into a new one."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class _RequestHandler(RequestHandler):
    def _create_association(self) -> Any:
        assoc = super()._create_association()
        # Same object, our recv(): a second AssociationSocket would queue a second Evt5.
        assoc.dul.socket.__class__ = _ReceivingSocket
        wakeups.attach(assoc)
        receive.attach(assoc, restore_network_timeout)
        turn = cast(_Server, self.server)._turn
        if turn is not None:  # the association counts in this receiver's load until it ends
            turn.opened(self.request, assoc)
            run = assoc.run

            def run_then_close() -> None:
                try:
                    run()
                finally:
                    turn.closed(assoc)

            assoc.run = run_then_close  # type: ignore[method-assign]
        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server on a listening socket of its own (SO_REUSEPORT) or one
    shared with other receiver processes (``pacs.dimse.accept``: the least busy accepts
    first), TCP_NODELAY on every accepted connection, fewer reads per PDU
    (:class:`_ReceivingSocket`), reactors woken by events instead of polling
    (``pacs.dimse.wakeups``), and the TLS handshake in the connection's own thread."""

    # socketserver's listen() backlog is 5: a sixth modality connecting at the same moment
    # waited for the kernel's SYN retry (1 s and more).
    request_queue_size = BACKLOG

    def __init__(
        self,
        *args: Any,
        shared: socket.socket | None = None,
        loads: Loads | None = None,
        slot: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs["request_handler"] = _RequestHandler
        self._shared = shared
        self._turn: AcceptTurn | None = None
        super().__init__(*args, **kwargs)
        self.contexts = _SharedContexts(self.contexts)
        if shared is not None:
            # Without the other receivers' loads (a server made outside pacs serve), alone.
            self._turn = AcceptTurn(loads or Loads(1), slot if loads else 0)
            self.bind(evt.EVT_CONN_CLOSE, self._connection_closed)

    def service_actions(self) -> None:
        # Every turn of serve_forever (at least every 0.5 s): the other receivers see this
        # one's accept loop run (a stuck one is not left connections).
        if self._turn is not None:
            self._turn.heartbeat()
        super().service_actions()

    def _connection_closed(self, event: Any) -> None:
        # A port probe's association thread lives on until its ACSE timeout: it counts
        # until its connection closes, not until its thread ends.
        if self._turn is not None:
            self._turn.closed(event.assoc)

    def server_bind(self) -> None:
        if self._shared is not None:
            cast(socket.socket, self.socket).close()
            self.socket = self._shared
            self.server_address = self._shared.getsockname()
            return
        sock = cast(socket.socket, self.socket)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def server_activate(self) -> None:
        if self._shared is None:  # a shared socket listens already
            super().server_activate()

    def server_close(self) -> None:
        # A shared socket stays open: pacs serve's other receivers and respawns accept on it
        # (each process closes its own copy when it exits).
        if self._shared is None:
            super().server_close()

    def shutdown(self) -> None:
        # pynetdicom's own shutdown() also unregisters the server from its AE, which only
        # happens for servers made by AE.start_server(), not AE.make_server().
        if self._turn is not None:
            self._turn.leave()
        socketserver.TCPServer.shutdown(self)
        self.server_close()

    def get_request(self) -> tuple[socket.socket, Any]:
        # Not pynetdicom's get_request: it shakes hands in the accepting thread, where one
        # client that connects and stays silent would block every later connection.
        if self._turn is not None:
            self._turn.wait(cast(socket.socket, self.socket))
        # On a shared socket, BlockingIOError when another receiver took the connection:
        # socketserver goes back to waiting for the next.
        sock, address = cast(socket.socket, self.socket).accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # pynetdicom's DUL reads a PDU with blocking recv() calls once its first bytes are in:
        # without a timeout on the connection, a peer that stalls mid-PDU held its thread and
        # its association slot for ever (the network timeout only applies between PDUs).
        # The kernel's timeouts keep the socket blocking: Python's own (settimeout) polls
        # before every call, ~25% of the receive path's CPU. A read or write that times out
        # fails with EAGAIN, which pynetdicom takes as the connection closed.
        timeout = self.ae.network_timeout
        if timeout:
            seconds = struct.pack("ll", int(timeout), int(timeout % 1 * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, seconds)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, seconds)
        if self.ssl_context is not None:
            sock.settimeout(timeout)  # the TLS layer handles EAGAIN itself: Python's timeout
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        if self._turn is not None:
            self._turn.started(sock)
        return sock, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                try:
                    request.settimeout(self.ae.network_timeout)
                    request.do_handshake()
                except (OSError, ValueError) as exc:
                    # A refused certificate, an old protocol version, or a silent client.
                    log.warning("TLS handshake with %s failed: %s", client_address[0], exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            # The association's thread runs now (pynetdicom's handler started it), or none
            # was made of the connection.
            if self._turn is not None:
                self._turn.settled(request)


def bind_association(event: Any) -> None:
    """EVT_REQUESTED, first: an id for this association, on every log line written in its
    thread (``pacs.logs``); pynetdicom runs each association in a thread of its own, and the
    DUL thread that takes its C-STOREs (``pacs.dimse.receive``) uses the same id."""
    identifier = new_id()
    association_id.set(identifier)
    event.assoc._pacs_association_id = identifier


def prefer_proposed_order(event: Any) -> None:
    """EVT_REQUESTED: accept, in each presentation context, the requestor's first proposed
    little endian uncompressed transfer syntax we support (else its first one we support),
    not the first of our own list (pynetdicom's rule; PS3.8 leaves the choice to the
    acceptor). A C-GET SCU lists the syntax it prefers first (dcmtk getscu: Explicit VR
    Little Endian); with our list's order every such context was Implicit VR Little Endian.
    Little endian uncompressed comes first because any uncompressed instance can be sent in
    it (pynetdicom converts between them), while a compressed or big endian context carries
    only instances stored exactly so."""
    proposed: dict[str, list[str]] = {}
    for context in event.assoc.requestor.requested_contexts:
        syntaxes = proposed.setdefault(str(context.abstract_syntax), [])
        syntaxes += [str(ts) for ts in context.transfer_syntax if str(ts) not in syntaxes]
    acceptor = event.assoc.acceptor
    contexts = []
    for context in acceptor.supported_contexts:
        wanted = proposed.get(str(context.abstract_syntax))
        if wanted:
            ours = {str(ts): ts for ts in context.transfer_syntax}
            first = sorted(
                (ours[ts] for ts in wanted if ts in ours), key=lambda ts: ts not in UNCOMPRESSED_LE
            )
            # Every association shares the server's contexts (_SharedContexts): reorder a copy.
            context = copy.copy(context)
            # The same UID objects in another order, set past pynetdicom's setter, which would
            # build and validate each anew: ~6,700 UIDs, ~60 ms of CPU for an association
            # proposing 120 storage classes (the test of this order fails if this breaks).
            rest = [ts for name, ts in ours.items() if name not in wanted]
            context._transfer_syntax = [*first, *rest]
        contexts.append(context)
    acceptor.supported_contexts = contexts


def build_ae(
    ae_title: str, max_associations: int, network_timeout: float, idle_timeout: float = 10.0
) -> AE:
    """An AE supporting Verification and all storage SOP classes in all transfer syntaxes.

    A new connection has *idle_timeout* seconds to send its A-ASSOCIATE-RQ (the ACSE timeout,
    which also bounds how long a C-MOVE destination may take to answer ours).
    """
    quiet_diagnostics()
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.network_timeout = network_timeout
    ae.acse_timeout = min(ae.acse_timeout or idle_timeout, idle_timeout)
    ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
    transfer_syntaxes = [str(uid) for uid in AllTransferSyntaxes] + [
        uid for uid in EXTRA_TRANSFER_SYNTAXES if uid not in AllTransferSyntaxes
    ]
    ae.add_supported_context(VERIFICATION, transfer_syntaxes)
    for model in (*FIND_MODELS, *RETRIEVE_MODELS):
        ae.add_supported_context(model, [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)])
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            # scp_role: a C-GET requestor may act as storage SCP on its own association.
            ae.add_supported_context(
                context.abstract_syntax, transfer_syntaxes, scu_role=False, scp_role=True
            )
    return ae


def make_servers(
    archive: Archive,
    host: str,
    listeners: Sequence[Listener],
    ae_title: str,
    max_associations: int = 32,
    network_timeout: float = 60.0,
    max_query_results: int = 1000,
    allow_unknown: bool = True,
    tls_client: ssl.SSLContext | None = None,
    default_facility: str = "default",
    max_associations_per_peer: int = 8,
    idle_timeout: float = 10.0,
) -> list[Any]:
    """Bind one DIMSE server per listener, all of one AE (one association limit, one access
    policy); call ``serve_forever()`` on each (``shutdown()`` stops it).

    The server answers to *ae_title* and to the AE title of every registered facility
    (``pacs.dimse.access``).

    Parameters
    ----------
    allow_unknown
        Whether an AE title missing from the AE registry may associate (with every
        permission); registered AEs get what their entry permits (``pacs.dimse.access``).
    tls_client
        The context of C-MOVE sub-associations to destinations registered with ``--tls``
        (None: such a destination is refused).
    default_facility
        The facility of C-STOREs to *ae_title* (``PACS_FACILITY``).
    max_associations_per_peer, idle_timeout
        Associations one address may hold open, and seconds an association may stay silent
        before its first P-DATA (``pacs.dimse.limits``).
    """
    ae = build_ae(ae_title, max_associations, network_timeout, idle_timeout)
    policy = AccessPolicy(archive.db, allow_unknown, ae_title, default_facility)
    limits = AssociationLimits(max_associations_per_peer, idle_timeout)
    sends = Sends(archive.db)
    handlers: list[Any] = [
        (evt.EVT_CONN_CLOSE, sends.on_closed),
        (evt.EVT_RELEASED, sends.on_released),
        (evt.EVT_REQUESTED, bind_association),
        (evt.EVT_REQUESTED, limits.on_requested),
        (evt.EVT_REQUESTED, policy.on_requested),
        (evt.EVT_REQUESTED, prefer_proposed_order),
        (evt.EVT_ACCEPTED, handle_accepted),
        (evt.EVT_PDU_RECV, limits.on_pdu_received),
        (evt.EVT_ABORTED, handle_aborted),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [archive, policy, sends]),
        (evt.EVT_C_FIND, handle_find, [archive, max_query_results, policy]),
        (evt.EVT_C_MOVE, handle_move, [archive, policy, tls_client]),
        (evt.EVT_C_GET, handle_get, [archive, policy]),
    ]
    return [
        ae.make_server(
            (host, listener.port),
            evt_handlers=handlers,
            ssl_context=listener.ssl_context,
            server_class=_Server,
            shared=listener.shared,
            loads=listener.loads,
            slot=listener.slot,
        )
        for listener in listeners
    ]
