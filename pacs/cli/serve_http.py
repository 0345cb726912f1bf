"""The DICOMweb API of ``pacs serve``: a uvicorn server in a thread, in one process or several.

One Python process answers HTTP on one core: a viewer fetching a series' frames over six
connections kept the API's process busy while the machine's other cores idled. With
``PACS_HTTP_PROCESSES`` > 1, ``pacs serve`` binds the HTTP port once and that many processes
(itself and its children) serve the same socket, each its own app on the same archive (the
index and the blob store are shared through the database and storage, as the receivers'
are; each process writes its own audit events in its own grouped transactions).

asyncio accepts every pending connection of a readable socket in one go, so the first process
to wake took all six of a browser's connections at once (one time in four in the test, the
parent, with the receiver's threads, being slower to wake). With :class:`TakeTurns` a process
takes a waiting connection only when no other process has fewer open (the counts are in
shared memory), or once it has waited ``MAX_DEFERRAL`` for one that has.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from pacs.errors import ArchiveError
from pacs.heap import freeze_start_up
from pacs.settings import PacsSettings

log = logging.getLogger("pacs")


# How long a process leaves a waiting connection to a less busy one before it takes it anyway
# (that one may be stuck, or slow to wake).
MAX_DEFERRAL = 0.02


class Shares:
    """The open connections of each HTTP process, in memory all of them see (slot 0 is the
    parent's, slot *n* child ``http-n``'s)."""

    def __init__(self, processes: int) -> None:
        import multiprocessing

        self.counts = multiprocessing.get_context("spawn").RawArray("i", processes)


class TakeTurns(socket.socket):
    """A listening socket shared by several processes' event loops: a process takes a waiting
    connection only when no other has fewer open connections, or when the connection has
    waited ``MAX_DEFERRAL`` for one that has."""

    counts: Any = None
    slot = 0
    _deferred_since: float | None = None

    def accept(self) -> tuple[socket.socket, Any]:
        mine = self.counts[self.slot]
        if mine > min(self.counts):
            now = time.monotonic()
            if self._deferred_since is None:
                self._deferred_since = now
            if now - self._deferred_since < MAX_DEFERRAL:
                # asyncio reads this as "nothing left" and looks again on its next turn.
                raise BlockingIOError("a less busy process takes this connection")
        self._deferred_since = None
        connection, address = super().accept()
        self.counts[self.slot] += 1
        return _Counted(self, connection.detach()), address


class _Counted(socket.socket):
    """An accepted connection that counts as open until closed."""

    def __init__(self, listening: TakeTurns, fd: int) -> None:
        super().__init__(listening.family, listening.type, listening.proto, fileno=fd)
        self._listening: TakeTurns | None = listening

    def close(self) -> None:
        if self._listening is not None:
            self._listening.counts[self._listening.slot] -= 1
            self._listening = None
        super().close()


def take_turns(shared: socket.socket, shares: Shares, slot: int) -> TakeTurns:
    """This process's own handle on *shared*, taking connections in turns (slot *slot*)."""
    sock = TakeTurns(shared.family, shared.type, shared.proto, fileno=shared.dup().detach())
    sock.setblocking(False)
    sock.counts, sock.slot = shares.counts, slot
    shares.counts[slot] = 0  # a process restarted in this slot starts with none
    return sock


def start_http(
    settings: PacsSettings, shared: tuple[socket.socket, Shares] | None = None, slot: int = 0
) -> tuple[Any, threading.Thread]:
    """The DICOMweb API in a thread of this process, on PACS_HOST:PACS_HTTP_PORT (on the
    port's *shared* socket when several processes serve it).

    The API's modules (FastAPI, numpy, Pillow) are imported here, not at the top: receiver
    processes, which import ``pacs.cli.serve``, never load them.
    """
    import uvicorn

    from pacs.cli.common import open_archive
    from pacs.secretbox import SecretBox
    from viewer_api import ApiSettings, TokenVerifier, create_app, load_or_create_secret
    from viewer_api.http_protocol import HeaderDeadlineProtocol

    try:
        api = ApiSettings()
        api.scrape_token()  # a PACS_METRICS_TOKEN_FILE that cannot be read stops us here
    except ValueError as exc:
        raise ArchiveError(f"invalid settings: {exc}") from exc
    if api.oidc_issuer:
        verifier = TokenVerifier(oidc_issuer=api.oidc_issuer, oidc_audience=api.oidc_audience)
    else:
        secret = load_or_create_secret(settings.home, settings.jwt_secret_file)
        verifier = TokenVerifier(secret=secret)
    application = create_app(
        open_archive(settings),
        verifier,
        api,
        egress=settings.egress_policy(),
        secret_box=SecretBox.at(settings.home, settings.secret_key_file),
    )
    # proxy_headers off: uvicorn would otherwise replace the peer address with X-Forwarded-For
    # (trusting 127.0.0.1), and PACS_TRUSTED_PROXIES is checked against the real peer.
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=api.http_port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        # Request heads are capped by h11's default (16 KiB, then 400); see http_protocol.
        http=HeaderDeadlineProtocol.with_timeouts(api.http_header_timeout, api.http_body_timeout),
    )
    server = uvicorn.Server(config)
    sockets = None if shared is None else [take_turns(*shared, slot)]
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": sockets}, name="http", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise ArchiveError(f"the HTTP API could not start on port {api.http_port}")
    freeze_start_up()
    log.info("HTTP API listening on %s:%d", settings.host, api.http_port)
    return server, thread


def stop_http(server: Any, thread: threading.Thread) -> None:
    """Stop the API, then write the audit summaries of its frame reads' and stores' open
    windows, and sync the index: the audit events of the last reads may not be on disk yet
    (``Database.write(durable=False)``)."""
    server.should_exit = True
    thread.join(timeout=10)
    state = server.config.app.state
    try:
        state.frame_reads.close()
        state.archive.close()
        state.archive.db.sync()
    except Exception:  # logged, and the rest of the shutdown goes on
        log.exception("audit summaries of frame reads or stores not written, or not synced")
