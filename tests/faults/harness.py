"""A fault harness: studies in flight from several senders (dcmtk storescu, `pacs send`) while
processes are killed with SIGKILL, PostgreSQL restarts, the S3 endpoint goes away and the
filesystem store fills; then the invariants of DESIGN.md are checked. `tests/faults` runs a
short seeded schedule, `bench/faults.py` a long one.

Invariants checked after a schedule (:meth:`FaultSite.verify`):

- every instance acknowledged with 0x0000 is in the index and its blob is byte for byte what
  was sent; `pacs fsck` finds nothing missing or mismatched, and is consistent after
  `--repair` (of orphans: blobs whose commit a kill prevented);
- every failed instance was sent again until acknowledged (a failure status is transient);
- each study has one AI run per job (none lost) and at least one job, no more than
  `study.stable` events: each event queues a job, unless one of the study's is still
  waiting (queued, or queued again after a failure), which then analyses the newer state;
  every job ended done, or superseded by a newer job of its study, and the newest is done;
- each study holds exactly one AI result SR: its newest run's (a re-run replaces the SR of the
  run before, so a study that became stable twice still has one);
- a poller reading the change feed during the run saw every row the feed holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from sqlalchemy import func, select

from bench.generate import write_study
from pacs.changefeed import read_changes
from pacs.index import Database
from pacs.index.schema import ai_run, change, job, study
from pacs.results import NODULE_DETECTION, RunOutcome
from pacs.storage import open_store
from tests.dicom import dataset_bytes
from tests.pacs.test_dimse_server import stored
from tests.servers import PacsServer, PostgresServer, S3Server, dcmtk, free_port, wait_for

# Inference kept cheap: small slices, few of them, accepted by relaxed selection rules.
SLICE_SIZE = 64
STUDY_INSTANCES = 12
INFERENCE_ENV = {
    "PACS_MIN_SLICES": "8",
    "PACS_MIN_COVERAGE_MM": "0",
    "PACS_DEVICE": "cpu",
    "PACS_JOB_LEASE_S": "10",  # a killed worker's job is claimed again soon
}
# Generous: on a loaded machine a `pacs serve` takes tens of seconds to start.
START_TIMEOUT = 240
FAULTS = ("receiver", "api", "worker", "server", "postgres", "s3")


def write_studies(folder: Path, count: int, seed: int) -> list[Path]:
    """*count* small synthetic CT studies, one folder each."""
    folders = [folder / f"study-{seed}-{n:03d}" for n in range(count)]
    for n, path in enumerate(folders):
        write_study(path, STUDY_INSTANCES, f"FAULT{seed}-{n}", seed * 1000 + n, SLICE_SIZE)
    return folders


def storescu_send(port: int, files: list[Path]) -> set[Path]:
    """C-STORE *files* with dcmtk's storescu; the files it reports acknowledged with 0x0000."""
    done = subprocess.run(
        [dcmtk("storescu"), "-v", "-aet", "CT_SCANNER", "-aec", "PACS", "-to", "5", "-ta", "5",
         "-td", "10", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    acknowledged: set[Path] = set()
    current: Path | None = None
    for line in (done.stdout + done.stderr).splitlines():
        if match := re.search(r"Sending file: (.+)$", line):
            current = Path(match.group(1).strip())
        elif "Received Store Response" in line and current is not None:
            if "(Success)" in line:
                acknowledged.add(current)
            current = None
    return acknowledged


def pacs_send(port: int, files: list[Path]) -> set[Path]:
    """C-STORE *files* with `pacs send`: those it does not list as failed were acknowledged
    (it prints each failed file and its status or reason)."""
    done = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "send", "--port", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "COLUMNS": "1000"},
    )  # fmt: skip
    if "sent " not in done.stdout:  # it did not finish: nothing is known acknowledged
        return set()
    failed = {Path(m) for m in re.findall(r"failed (\S+\.dcm):", done.stderr)}
    return {path for path in files if path not in failed}


@dataclass
class Tally:
    """What happened, for the report."""

    instances: int = 0
    acknowledged: int = 0
    first_try_failures: int = 0
    resends: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    changes_seen: int = 0
    jobs: int = 0
    ai_runs: int = 0
    #: Studies that became stable more than once (analysed again: a late or resent instance).
    reanalysed: int = 0
    orphans_repaired: int = 0


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


def children(pid: int) -> list[int]:
    """The receiver processes of the `pacs serve` process *pid* (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie, dead but not reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class FaultSite:
    """One archive on PostgreSQL + S3 with PACS_RECEIVERS receiver processes and a separate
    `pacs worker`, the servers it needs, and the change-feed poller."""

    def __init__(self, root: Path, postgres: PostgresServer, s3: S3Server, receivers: int = 2):
        self.root, self.postgres, self.s3 = root, postgres, s3
        self.gate = S3Gate(s3.port)
        self.database_url = postgres.new_database()
        bucket = f"faults-{os.getpid()}-{random.randrange(1 << 30)}"
        self.storage_url = f"s3://{bucket}?endpoint=127.0.0.1:{self.gate.port}&secure=false"
        env = {
            "PACS_DATABASE_URL": self.database_url,
            "PACS_STORAGE_URL": self.storage_url,
            "PACS_S3_ACCESS_KEY": s3.access_key,
            "PACS_S3_SECRET_KEY": s3.secret_key,
            "PACS_RECEIVERS": str(receivers),
            "PACS_STABLE_AGE": "2",
            # How long a send broken off by a fault waits for its resend. The quiet time counts
            # on while the archive is down: the schedule's restarts follow one another (about
            # 30 s each on a loaded machine) and 60 s let a half-sent study become stable.
            "PACS_STABLE_AGE_INCOMPLETE": "120",
            "PACS_CHANGE_SETTLE": "2",
            **INFERENCE_ENV,
        }
        self.server = PacsServer(root / "home", env)
        self.server.home.mkdir(parents=True, exist_ok=True)
        self.server.pacs("db", "upgrade")
        self.server.start(START_TIMEOUT)
        self.worker: subprocess.Popen[bytes] | None = None
        self.start_worker()
        self.tally = Tally()
        self.seen: list[int] = []
        self._polling = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    # -- processes ---------------------------------------------------------------------------

    def start_worker(self) -> None:
        with (self.root / "worker.log").open("ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "pacs.cli", "worker", "--concurrency", "1"],
                env=self.server.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def inject(self, fault: str) -> None:
        """Inject *fault* (one of FAULTS) and bring the site back."""
        process = self.server.process
        assert process is not None and self.worker is not None
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
            self.start_worker()
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
        self._polling.set()
        self._poller.join(timeout=10)
        if self.worker is not None:
            self.worker.kill()
            self.worker.wait()
        process = self.server.process
        if process is not None:
            receivers = children(process.pid)
            self.server.stop()
            for pid in receivers:
                kill(pid)
        self.gate.close()

    # -- load --------------------------------------------------------------------------------

    def send_all(self, folders: list[Path], deadline: float) -> None:
        """Send each study from its own sender (storescu or `pacs send`, alternately), sending
        what failed again until everything was acknowledged."""
        errors: list[BaseException] = []

        def sender(n: int, folder: Path) -> None:
            try:
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
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=sender, args=(n, folder)) for n, folder in enumerate(folders)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

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

    # -- change feed -------------------------------------------------------------------------

    def _poll(self) -> None:
        """A change-feed consumer during the whole run (it rides out PostgreSQL restarts)."""
        db = Database(self.database_url)
        since = 0
        try:
            while not self._polling.wait(0.2):
                with contextlib.suppress(Exception), db.read() as conn:
                    for item in read_changes(conn, since, 500):
                        self.seen.append(item.seq)
                        since = item.seq
        finally:
            db.dispose()

    # -- checks ------------------------------------------------------------------------------

    def settle(self, timeout: float) -> None:
        """Wait until every study is stable and every job has ended."""
        db = Database(self.database_url)
        try:

            def quiet() -> bool:
                with db.read() as conn:
                    unstable = conn.execute(
                        select(func.count()).where(
                            (study.c.stable_at.is_(None))
                            | (study.c.stable_at < study.c.last_received_at)
                        )
                    ).scalar_one()
                    busy = conn.execute(
                        select(func.count()).where(job.c.status.in_(("queued", "running")))
                    ).scalar_one()
                return unstable == 0 and busy == 0

            wait_for(quiet, timeout, "stable studies and ended jobs")
        finally:
            db.dispose()

    def verify(self, folders: list[Path]) -> Tally:
        """Check the invariants (module docstring) once the run has settled."""
        files = [path for folder in folders for path in sorted(folder.glob("*.dcm"))]
        rows = stored(self.server, self.database_url)
        blobs = open_store(self.storage_url, self.s3.access_key, self.s3.secret_key)
        for path in files:  # every file was acknowledged, in the end
            row = rows[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID]
            sent = dataset_bytes(path.read_bytes())
            assert dataset_bytes(blobs.get(str(row["blob_key"]))) == sent, path
        report = json.loads(self.server.pacs("fsck", "--json").stdout)
        assert report["missing"] == [] and report["mismatched"] == [], report
        repaired = json.loads(self.server.pacs("fsck", "--repair", "--grace", "0", "--json").stdout)
        assert repaired["consistent"] is True, repaired
        self.tally.orphans_repaired += len(repaired.get("orphans", []))
        db = Database(self.database_url)
        try:
            with db.read() as conn:
                stable = Counter(
                    conn.execute(
                        select(change.c.study_instance_uid).where(change.c.kind == "study.stable")
                    ).scalars()
                )
                jobs = conn.execute(
                    select(
                        job.c.id, job.c.study_instance_uid, job.c.status, job.c.last_error
                    ).where(job.c.kind == NODULE_DETECTION)
                ).all()
                runs = {
                    int(r.job_id): r
                    for r in conn.execute(
                        select(
                            ai_run.c.job_id,
                            ai_run.c.study_instance_uid,
                            ai_run.c.outcome,
                            ai_run.c.sr_sop_instance_uid,
                        )
                    )
                }
                feed = list(conn.execute(select(change.c.seq).order_by(change.c.seq)).scalars())
        finally:
            db.dispose()
        assert all(status in ("done", "superseded") for _, _, status, _ in jobs), jobs
        newest: dict[str, tuple[int, str]] = {}
        for job_id, uid, status, _ in sorted(jobs):
            newest[uid] = (job_id, status)
        assert all(status == "done" for _, status in newest.values()), newest
        per_study = Counter(uid for _, uid, _, _ in jobs)
        run_count = Counter(str(r.study_instance_uid) for r in runs.values())
        assert set(stable) == {str(r["study_instance_uid"]) for r in rows.values()}
        # The SRs in the index, by study: one, the newest run's.
        reports: dict[str, list[str]] = {}
        for sop_uid, r in rows.items():
            if r["modality"] == "SR":
                reports.setdefault(str(r["study_instance_uid"]), []).append(sop_uid)
        for uid, events in stable.items():
            counts = (per_study[uid], events, run_count[uid])
            assert 1 <= per_study[uid] <= events, (uid, "jobs, stable events, runs", counts)
            assert run_count[uid] == per_study[uid], (uid, "jobs, stable events, runs", counts)
            run = runs[newest[uid][0]]
            assert run.outcome == RunOutcome.ANALYSED, (uid, run)
            assert reports.get(uid) == [run.sr_sop_instance_uid], (uid, reports.get(uid), run)
        self.tally.reanalysed = sum(1 for events in stable.values() if events > 1)
        # The poller reads on once the last rows have settled (PACS_CHANGE_SETTLE).
        wait_for(lambda: len(self.seen) >= len(feed), 30, "the poller to drain the feed")
        assert self.seen == feed, "the poller skipped or repeated changes"
        self.tally.changes_seen = len(self.seen)
        self.tally.jobs, self.tally.ai_runs = len(jobs), len(runs)
        return self.tally


@contextlib.contextmanager
def fault_site(root: Path, receivers: int = 2) -> Iterator[FaultSite]:
    postgres, s3 = PostgresServer(), S3Server()
    site: FaultSite | None = None
    try:
        site = FaultSite(root, postgres, s3, receivers)
        yield site
    finally:
        if site is not None:
            site.close()
        s3.stop()
        postgres.close()


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
