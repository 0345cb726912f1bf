"""``pacs serve``: the DIMSE receiver processes, the DICOMweb API, the stability sweeper,
the webhook dispatcher and (with PACS_WORKERS) inference, in one process tree."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pacs.cli.ai import InferenceRuntime
from pacs.cli.common import (
    configure_logging,
    load_settings,
    opened_archive,
    opened_index,
)
from pacs.cli.serve_http import Shares, start_http, stop_http
from pacs.dimse.accept import Loads, listening_socket
from pacs.dimse.server import Listener, make_servers
from pacs.dimse.tls import client_context, server_context
from pacs.errors import ArchiveError
from pacs.heap import freeze_start_up
from pacs.metrics import enable_multiprocess, metrics
from pacs.results import NODULE_DETECTION
from pacs.secretbox import SecretBox
from pacs.settings import PacsSettings
from pacs.stability import Sweeper
from pacs.webhooks import Dispatcher, seal_plain_rows

log = logging.getLogger("pacs")

# The DICOM ports' listening sockets, by port, when the receiver processes share them.
Sockets = dict[int, socket.socket]


def _listeners(
    settings: PacsSettings,
    shared: Sockets | None = None,
    loads: Loads | None = None,
    slot: int = 0,
) -> list[Listener]:
    """The plain port (unless PACS_DICOM_PLAIN=false) and the TLS port, when configured, on
    the sockets *shared* by the receiver processes (by port) when there are several, taken from
    in turns by their *loads* (this process's in *slot*).

    Raises
    ------
    TLSConfigError
        A certificate, key or CA file that cannot be loaded.
    """
    shared = shared or {}
    port = settings.dicom_port
    listeners = (
        [Listener(port, shared=shared.get(port), loads=loads, slot=slot)]
        if settings.dicom_plain
        else []
    )
    if settings.dicom_tls_port is not None:
        assert settings.dicom_tls_cert is not None and settings.dicom_tls_key is not None
        context = server_context(
            settings.dicom_tls_cert,
            settings.dicom_tls_key,
            settings.dicom_tls_ca,
            settings.dicom_tls_require_client_cert,
        )
        port = settings.dicom_tls_port
        listeners.append(Listener(port, context, shared.get(port), loads, slot))
    return listeners


def _shared_sockets(settings: PacsSettings) -> Sockets:
    """With several receivers, each DICOM port bound once here, for all of them to accept
    from (``pacs.dimse.accept``); with one, it binds its own."""
    if settings.receivers == 1:
        return {}
    ports = [settings.dicom_port] if settings.dicom_plain else []
    if settings.dicom_tls_port is not None:
        ports.append(settings.dicom_tls_port)
    sockets: Sockets = {}
    try:
        for port in ports:
            sockets[port] = _listen(settings.host, port)
    except ArchiveError:
        for bound in sockets.values():
            bound.close()
        raise
    return sockets


def _shared_http_socket(settings: PacsSettings) -> tuple[socket.socket, Shares] | None:
    """With several HTTP processes, the HTTP port bound once here for all of them, and their
    connection counts (``pacs.cli.serve_http``); with one, uvicorn binds it."""
    if settings.http_processes == 1:
        return None
    from viewer_api import ApiSettings

    try:
        port = ApiSettings().http_port
    except ValueError as exc:
        raise ArchiveError(f"invalid settings: {exc}") from exc
    return _listen(settings.host, port), Shares(settings.http_processes)


def _listen(host: str, port: int) -> socket.socket:
    """A shared listening socket (``pacs.dimse.accept``); a taken port is an ArchiveError."""
    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise ArchiveError(f"cannot listen on {host} port {port}: {exc}") from exc


def _serve_dimse(
    settings: PacsSettings,
    stop: Callable[[], bool],
    shared: Sockets,
    loads: Loads | None,
    slot: int,
) -> None:
    """Run one receiver (slot *slot* of *loads*) until *stop()* returns True."""
    listeners = _listeners(settings, shared, loads, slot)
    tls_client = client_context(
        settings.dicom_tls_ca, settings.dicom_tls_cert, settings.dicom_tls_key
    )
    with opened_archive(settings) as archive:
        archive.blobs.check()
        archive.facility_id(settings.facility)
        servers = make_servers(
            archive,
            settings.host,
            listeners,
            settings.ae_title,
            settings.max_associations,
            settings.network_timeout,
            settings.max_query_results,
            settings.allows_unknown_aes,
            tls_client,
            settings.facility,
            settings.max_associations_per_peer,
            settings.association_idle_timeout,
        )
        freeze_start_up()
        for server in servers:
            threading.Thread(target=server.serve_forever, name="dimse", daemon=True).start()
        ports = ", ".join(
            f"{listener.port}{' (TLS)' if listener.ssl_context else ''}" for listener in listeners
        )
        log.info(
            "DICOM %s listening on %s:%s (pid %d of %d receiver processes), index %s, storage %s",
            settings.ae_title,
            settings.host,
            ports,
            os.getpid(),
            settings.receivers,
            settings.resolved_database_url.split("@")[-1],  # never log a password
            settings.resolved_storage_url.split("?")[0],
        )
        try:
            while not stop():
                time.sleep(0.2)
        finally:
            for server in servers:
                server.shutdown()


def _receiver_process(
    settings: PacsSettings, stop: Any, parent: int, shared: tuple[Sockets, Loads | None, int]
) -> None:
    _child_setup()
    # A parent killed with SIGKILL never sets *stop*: an orphan would go on accepting on the
    # shared port beside the receivers of the restarted server, so it ends when orphaned.
    _serve_dimse(settings, lambda: stop.is_set() or os.getppid() != parent, *shared)


def _http_process(
    settings: PacsSettings, stop: Any, parent: int, shared: tuple[socket.socket, Shares, int]
) -> None:
    _child_setup()
    sock, shares, slot = shared
    server, thread = start_http(settings, (sock, shares), slot)
    try:
        while not (stop.is_set() or os.getppid() != parent) and thread.is_alive():
            time.sleep(0.2)
    finally:
        stop_http(server, thread)


def _child_setup() -> None:
    configure_logging()
    metrics()  # this process's metric files, before its threads record into them
    # The parent stops us through *stop* (and we stop when it is gone): a SIGINT or SIGTERM
    # sent to the whole process group (Ctrl-C, systemd) must not end us before we have
    # finished, e.g. written the audit summaries of an HTTP process's open windows.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Children:
    """Processes beyond the parent's own receiver and API (PACS_RECEIVERS,
    PACS_HTTP_PROCESSES), each restarted when it dies. A child runs
    ``target(settings, stop, parent pid, shared)``."""

    def __init__(self, settings: PacsSettings, context: Any, stop: Any) -> None:
        self.settings, self.context, self.stop = settings, context, stop
        self.children: list[tuple[str, Callable[..., None], Any, Any]] = []

    def start(self, name: str, target: Callable[..., None], shared: Any) -> None:
        self.children.append((name, target, shared, self._spawn(name, target, shared)))

    def _spawn(self, name: str, target: Callable[..., None], shared: Any) -> Any:
        child = self.context.Process(
            target=target, args=(self.settings, self.stop, os.getpid(), shared), name=name
        )
        child.start()
        return child

    def respawn(self) -> None:
        """Start a new process in place of each that has exited (killed, crashed)."""
        for i, (name, target, shared, child) in enumerate(self.children):
            if not self.stop.is_set() and child.exitcode is not None:
                log.warning(
                    "%s pid %d exited with %s: restarting it", name, child.pid, child.exitcode
                )
                self.children[i] = (name, target, shared, self._spawn(name, target, shared))

    def join(self, timeout: float) -> None:
        """Wait for the children to stop; one still running after *timeout* is killed (they
        ignore SIGTERM)."""
        for name, *_, child in self.children:
            child.join(timeout=timeout)
            if child.is_alive():
                log.error("%s did not stop in %s s: killed", name, timeout)
                child.kill()
                child.join(timeout=timeout)


def serve() -> None:
    """Run the archive: DICOM on PACS_DICOM_PORT, DICOMweb on PACS_HTTP_PORT."""
    settings = load_settings()
    configure_logging()
    # Before anything records a metric: this process and the receivers it spawns share them.
    enable_multiprocess(settings.home)
    # Each receiver loads the TLS files itself (contexts do not cross processes): a bad one
    # stops us here, before anything starts.
    _listeners(settings)
    client_context(settings.dicom_tls_ca, settings.dicom_tls_cert, settings.dicom_tls_key)
    embedded = settings.resolved_database_url.startswith("sqlite")
    # The schema is checked once, before anything starts (each part opens its own index).
    # Embedded defaults just work: a development SQLite index is migrated on start.
    with opened_archive(settings, migrate=embedded and settings.environment == "development"):
        pass
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    # The handler only flips a flag: taking a lock inside a signal handler can deadlock.
    signalled: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: signalled.append(signum))
    # The shared ports first: one that is taken stops us before anything has started.
    http_shared = _shared_http_socket(settings)
    shared = _shared_sockets(settings)
    loads = Loads(settings.receivers) if shared else None
    # First: if it cannot start, nothing else has.
    http, http_thread = start_http(settings, http_shared)
    # The sweeper's and the dispatcher's own indexes, disposed of once both have stopped.
    with contextlib.ExitStack() as indexes:
        sweeper = Sweeper(
            indexes.enter_context(opened_index(settings)),
            timedelta(seconds=settings.stable_age),
            timedelta(seconds=min(5.0, settings.stable_age / 4)),
            job_kinds=(NODULE_DETECTION,),
            incomplete_age=timedelta(seconds=settings.resolved_stable_age_incomplete),
        )
        sweeper.start()
        box = SecretBox.at(settings.home, settings.secret_key_file)
        dispatcher_index = indexes.enter_context(opened_index(settings))
        sealed = seal_plain_rows(dispatcher_index, box)
        if sealed:
            log.info("sealed the secrets of %d webhook subscription(s)", sealed)
        webhooks = Dispatcher(
            dispatcher_index,
            backoff=timedelta(seconds=settings.webhook_backoff),
            max_backoff=timedelta(seconds=settings.webhook_max_backoff),
            settle=timedelta(seconds=settings.change_settle),
            egress=settings.egress_policy(),
            box=box,
        )
        webhooks.start()
        # Imported here: `inference` loads torch, which no other command needs.
        from inference.settings import InferenceSettings

        workers = InferenceSettings().workers
        inference = InferenceRuntime(settings, workers) if workers else None
        if inference is not None:
            inference.start()
        children = _Children(settings, context, stop)
        for number in range(1, settings.receivers):
            children.start(f"receiver-{number}", _receiver_process, (shared, loads, number))
        for number in range(1, settings.http_processes):
            assert http_shared is not None
            children.start(f"http-{number}", _http_process, (*http_shared, number))

        def stopping() -> bool:
            children.respawn()
            return bool(signalled)

        try:
            _serve_dimse(settings, stopping, shared, loads, 0)
        finally:
            stop.set()
            stop_http(http, http_thread)  # first: its audit summaries before a grace period ends
            sweeper.stop()
            webhooks.stop()
            if inference is not None:
                inference.stop()
            children.join(timeout=10)
