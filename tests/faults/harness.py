"""A fault harness: studies in flight from several senders (dcmtk storescu, `pacs send`) while
processes are killed with SIGKILL, PostgreSQL restarts, the S3 endpoint goes away and the
filesystem store fills; then the invariants of DESIGN.md are checked (tests.faults.site,
:meth:`Site.verify`), and every failed instance must have been sent again until acknowledged
(a failure status is transient). `tests/faults` runs a short seeded schedule,
`bench/faults.py` a long one.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.faults.site import (
    START_TIMEOUT,
    Site,
    Tally,
    at_once,
    children,
    kill,
    pacs_send,
    running_site,
    storescu_send,
)
from tests.servers import PostgresServer, S3Server, free_port, wait_for

FAULTS = ("receiver", "api", "worker", "server", "postgres", "s3")


class S3Gate:
    """A TCP proxy in front of the S3 endpoint: :meth:`close` makes the endpoint go away as a
    stopped server does (open connections reset, new ones refused) while its data lives on
    (moto keeps objects in memory: stopping it would lose them)."""

    def __init__(self, upstream: int) -> None:
        self.upstream, self.port = upstream, free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accepting thread: the port is free
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for sock in list(self._open):  # their relays close them
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:  # the endpoint is down: so is this connection
                client.close()
                continue
            self._open |= {client, upstream}
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy both ways until either side ends; then close both (once neither direction
        reads from them any more: a socket closed under a reading thread would leak a
        ResourceWarning or read another connection's reused descriptor)."""
        back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
        back.start()
        self._pipe(client, upstream)
        back.join()
        for sock in (client, upstream):
            self._open.discard(sock)
            sock.close()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):  # wakes the other direction's recv()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie, dead but not reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class FaultSite(Site):
    """One node (`pacs serve` with PACS_RECEIVERS *receivers*) and one `pacs worker` on
    PostgreSQL + S3, the S3 endpoint behind a gate that faults close."""

    def __init__(self, root: Path, postgres: PostgresServer, s3: S3Server, receivers: int = 2):
        self.gate = S3Gate(s3.port)
        # How long a send broken off by a fault waits for its resend. The quiet time counts
        # on while the archive is down: the schedule's restarts follow one another (about
        # 30 s each on a loaded machine) and 60 s let a half-sent study become stable.
        incomplete = {"PACS_STABLE_AGE_INCOMPLETE": "120"}
        super().__init__(
            root, postgres, s3, receivers=receivers, s3_port=self.gate.port, settings=incomplete
        )

    @property
    def worker(self) -> subprocess.Popen[bytes]:
        worker = self.workers[0]
        assert worker is not None
        return worker

    def inject(self, fault: str) -> None:
        """Inject *fault* (one of FAULTS) and bring the site back."""
        process = self.server.process
        assert process is not None
        if fault == "receiver":
            receivers = children(process.pid)
            assert receivers, "no receiver process to kill (PACS_RECEIVERS=1?)"
            kill(random.choice(receivers))
            self.tally.kills[fault] += 1
            # `pacs serve` starts a new one in its place.
            wait_for(
                lambda: len(children(process.pid)) == len(receivers),
                START_TIMEOUT,
                "a new receiver",
            )
            self.tally.restarts[fault] += 1
        elif fault in ("api", "server"):
            receivers = children(process.pid)
            for pid in [process.pid, *(receivers if fault == "server" else [])]:
                kill(pid)
            process.wait()
            self.tally.kills[fault] += 1
            self.server.start(START_TIMEOUT)
            self.tally.restarts[fault] += 1
            # The killed parent's receivers do not serve on as orphans.
            wait_for(lambda: not any(map(alive, receivers)), START_TIMEOUT, "orphans to exit")
        elif fault == "worker":
            self.worker.kill()
            self.worker.wait()
            self.tally.kills[fault] += 1
            self.start_worker(0)
            self.tally.restarts[fault] += 1
        elif fault == "postgres":
            self.postgres.restart()
            self.tally.restarts[fault] += 1
        elif fault == "s3":
            self.gate.close()
            time.sleep(2)
            self.gate.open()
            self.tally.restarts[fault] += 1
        else:
            raise ValueError(f"unknown fault {fault}")

    def close(self) -> None:
        super().close()
        self.gate.close()

    # -- load --------------------------------------------------------------------------------

    def send_all(self, folders: list[Path], deadline: float) -> None:
        """Send each study from its own sender (storescu or `pacs send`, alternately), sending
        what failed again until everything was acknowledged."""

        def sender(n: int, folder: Path) -> None:
            files = sorted(folder.glob("*.dcm"))
            self.tally.instances += len(files)
            pending, tries = files, 0
            while pending:
                assert time.monotonic() < deadline, f"{folder.name}: never acknowledged"
                send = storescu_send if (n + tries) % 2 == 0 else pacs_send
                acknowledged = send(self.server.port, pending)
                failed = [path for path in pending if path not in acknowledged]
                if tries == 0:
                    self.tally.first_try_failures += len(failed)
                else:
                    self.tally.resends += len(pending)
                self.tally.acknowledged += len(acknowledged)
                pending, tries = failed, tries + 1
                if pending:
                    time.sleep(1)

        at_once(sender, list(enumerate(folders)))

    def run(self, folders: list[Path], faults: list[str], seed: int, budget: float) -> Tally:
        """Send *folders* while injecting *faults* at random (seeded) moments."""
        rng = random.Random(seed)
        deadline = time.monotonic() + budget
        sending = threading.Thread(target=self.send_all, args=(folders, deadline))
        sending.start()
        for fault in faults:
            time.sleep(rng.uniform(0.5, 3.0))
            self.inject(fault)
        sending.join()
        return self.tally


@contextlib.contextmanager
def fault_site(root: Path, receivers: int = 2) -> Iterator[FaultSite]:
    with running_site(lambda postgres, s3: FaultSite(root, postgres, s3, receivers)) as site:
        yield site


def fill(folder: Path) -> Path:
    """Fill the filesystem of *folder* with one file until ENOSPC; return the file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (1 << 20, 4096, 1):  # big chunks, then what the last one left
            with contextlib.suppress(OSError):
                while os.write(fd, bytes(chunk)):
                    pass
    finally:
        os.close(fd)
    return filler


Mounter = Callable[[Path], None]
