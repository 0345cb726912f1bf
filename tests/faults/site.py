"""An archive site as an operator runs one: `pacs serve` nodes and `pacs worker` processes,
each with its own PACS_HOME, that share nothing but one PostgreSQL database, one S3 bucket and
the secrets every node must read (:data:`SHARED`); a change-feed poller beside them; and the
checks of DESIGN.md's invariants once a run has settled (:meth:`Site.verify`).

The fault harness (one node, one worker, faults injected) and the scale-out test (two nodes,
two workers) are both such sites. Invariants checked by :meth:`Site.verify`:

- every instance sent is in the index and its blob is byte for byte what was sent; `pacs
  fsck` finds nothing missing or mismatched, and is consistent after `--repair` (of orphans:
  blobs whose commit a kill prevented);
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
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from sqlalchemy import func, select

from bench.generate import write_study
from pacs.changefeed import ChangeKind, read_changes
from pacs.index import Database
from pacs.index.schema import ai_run, change, job, study, webhook_delivery
from pacs.results import NODULE_DETECTION, RunOutcome
from pacs.storage import open_store
from tests.dicom import dataset_bytes
from tests.pacs.test_dimse_server import stored
from tests.servers import PacsServer, PostgresServer, S3Server, dcmtk, wait_for

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
#: What every node and worker of a site shares (deploy/compose.yaml gives its services the
#: same, tests/test_deploy.py checks): the index, the bucket and its keys, the token secret (a
#: token one node made is accepted by all) and the key sealing webhook secrets (any node may
#: deliver any subscription's events). Nothing else: each has its own PACS_HOME.
#: Webhook settings of a site whose subscribers listen on loopback: allowed, retried soon.
WEBHOOK_ENV = {
    "PACS_WEBHOOK_ALLOW": '["127.0.0.1"]',
    "PACS_WEBHOOK_BACKOFF": "0.2",
    "PACS_WEBHOOK_MAX_BACKOFF": "1",
}
SHARED = (
    "PACS_DATABASE_URL",
    "PACS_STORAGE_URL",
    "PACS_S3_ACCESS_KEY",
    "PACS_S3_SECRET_KEY",
    "PACS_JWT_SECRET_FILE",
    "PACS_SECRET_KEY_FILE",
)


def write_studies(
    folder: Path, count: int, seed: int, instances: int = STUDY_INSTANCES
) -> list[Path]:
    """*count* small synthetic CT studies of *instances* slices, one folder each."""
    folders = [folder / f"study-{seed}-{n:03d}" for n in range(count)]
    for n, path in enumerate(folders):
        write_study(path, instances, f"FAULT{seed}-{n}", seed * 1000 + n, SLICE_SIZE)
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


Sender = Callable[[int, list[Path]], set[Path]]


def at_once(call: Callable[..., object], argument_lists: list[tuple[Any, ...]]) -> None:
    """*call* with each argument tuple, each in a thread of its own, all at once; the first
    exception any of them raised is raised here once all have ended."""
    errors: list[BaseException] = []

    def run(*arguments: Any) -> None:
        try:
            call(*arguments)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=arguments) for arguments in argument_lists]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def send_at_once(
    sends: list[tuple[Sender, int, list[Path]]], tries: int = 3
) -> tuple[set[Path], int]:
    """Run each (sender, DICOM port, files) in a thread of its own, all at once, sending what
    was not acknowledged again (up to *tries* sends in all), as a modality would; return the
    files acknowledged and how many failed their first send (an association refused or timed
    out on a loaded machine, say)."""
    acknowledged: set[Path] = set()
    first_failures: list[int] = []

    def run(sender: Sender, port: int, files: list[Path]) -> None:
        pending = files
        for attempt in range(tries):
            done = sender(port, pending)
            acknowledged.update(done)
            pending = [path for path in pending if path not in done]
            if attempt == 0:
                first_failures.append(len(pending))
            if not pending:
                return
            time.sleep(1)

    at_once(run, list(sends))
    return acknowledged, sum(first_failures)


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


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


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
    #: Jobs done, by the worker process that ran them ("worker-0", ...).
    jobs_by_worker: Counter[str] = field(default_factory=Counter)


def write_secret(path: Path) -> Path:
    """32 random bytes in a new 0600 file, as an operator makes a shared secret."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(os.urandom(32))
    return path


class Site:
    """*nodes* `pacs serve` processes (PACS_RECEIVERS *receivers* each) and *workers*
    `pacs worker --concurrency 1` processes, each with its own PACS_HOME under *root*, on a new
    database of *postgres* and a new bucket of *s3* (reached on *s3_port*, the endpoint's own
    port unless a proxy stands in front of it); *settings* add to or override the site's
    tuning (short stability and settle times, cheap inference)."""

    def __init__(
        self,
        root: Path,
        postgres: PostgresServer,
        s3: S3Server,
        *,
        nodes: int = 1,
        workers: int = 1,
        receivers: int = 2,
        s3_port: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.root, self.postgres, self.s3 = root, postgres, s3
        self.database_url = postgres.new_database()
        bucket = f"site-{os.getpid()}-{random.randrange(1 << 30)}"
        endpoint = f"127.0.0.1:{s3_port or s3.port}"
        self.storage_url = f"s3://{bucket}?endpoint={endpoint}&secure=false"
        secrets = root / "secrets"
        self.shared = {
            "PACS_DATABASE_URL": self.database_url,
            "PACS_STORAGE_URL": self.storage_url,
            "PACS_S3_ACCESS_KEY": s3.access_key,
            "PACS_S3_SECRET_KEY": s3.secret_key,
            "PACS_JWT_SECRET_FILE": str(write_secret(secrets / "jwt-secret")),
            "PACS_SECRET_KEY_FILE": str(write_secret(secrets / "webhook-key")),
        }
        assert tuple(self.shared) == SHARED
        self.settings = {
            "PACS_RECEIVERS": str(receivers),
            "PACS_STABLE_AGE": "2",
            "PACS_CHANGE_SETTLE": "2",
            **INFERENCE_ENV,
            **(settings or {}),
        }
        self.nodes = [
            PacsServer(root / f"node-{n}", {**self.shared, **self.settings}) for n in range(nodes)
        ]
        for node in self.nodes:
            node.home.mkdir(parents=True, exist_ok=True)
        self.nodes[0].pacs("db", "upgrade")  # once, before any node starts (as deploy/ does)
        self._start_nodes()
        self.worker_homes = [root / f"worker-{n}" for n in range(workers)]
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        for n in range(workers):
            self.start_worker(n)
        self.tally = Tally()
        self.seen: list[int] = []
        self._polling = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    @property
    def server(self) -> PacsServer:
        """The first node (the one every `pacs` command of the checks runs against)."""
        return self.nodes[0]

    # -- processes ---------------------------------------------------------------------------

    def _start_nodes(self) -> None:
        """Start every node at once (each takes tens of seconds on a loaded machine)."""
        at_once(lambda node: node.start(START_TIMEOUT), [(node,) for node in self.nodes])

    def start_worker(self, number: int) -> None:
        """Start worker *number* (again), in its own home."""
        home = self.worker_homes[number]
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PACS_HOME": str(home), **self.shared, **self.settings}
        with (home / "worker.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pacs.cli", "worker", "--concurrency", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.workers[number] = process

    def close(self) -> None:
        """Stop the poller, the workers and the nodes (with their receiver processes)."""
        self._polling.set()
        self._poller.join(timeout=10)
        for worker in self.workers:
            if worker is not None:
                worker.kill()
                worker.wait()
        for node in self.nodes:
            if node.process is not None:
                receivers = children(node.process.pid)
                node.stop()
                for pid in receivers:
                    kill(pid)

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

    def claims(self) -> dict[int, str]:
        """Which worker ("worker-0", ...) last claimed each job, from the workers' logs."""
        claimed: dict[int, str] = {}
        for home in self.worker_homes:
            log = (home / "worker.log").read_text(errors="replace")
            for job_id in re.findall(
                r"pacs\.jobs: job (\d+) \(.*\) study \S+ (?:re-)?claimed", log
            ):
                claimed[int(job_id)] = home.name
        return claimed

    def subscribe(self, url: str, secret: str) -> int:
        """Subscribe *url* to every event of every facility through the first node's API;
        the subscription's id."""
        with self.server.client("admin", facilities=("*",)) as api:
            created = api.post(
                "/api/v1/webhooks",
                json={"url": url, "events": sorted(ChangeKind), "secret": secret},
            )
        assert created.status_code == 201, created.text
        return int(created.json()["id"])

    def outbox(self, subscription: int) -> tuple[set[str], int]:
        """The idempotency keys of every change of the feed (what *subscription*, of every
        event and facility, is owed) and how many of its deliveries are done."""
        db = Database(self.database_url)
        try:
            with db.read() as conn:
                seqs = conn.execute(select(change.c.seq)).scalars().all()
                delivered = conn.execute(
                    select(func.count()).where(
                        webhook_delivery.c.webhook_fk == subscription,
                        webhook_delivery.c.status == "delivered",
                    )
                ).scalar_one()
        finally:
            db.dispose()
        return {f"{subscription}-{seq}" for seq in seqs}, int(delivered)

    def wait_delivered(self, subscription: int, timeout: float) -> set[str]:
        """Wait until every change of the feed is delivered to *subscription*; return the
        idempotency keys it was owed (:meth:`outbox`)."""
        owed, _ = self.outbox(subscription)
        wait_for(
            lambda: self.outbox(subscription)[1] == len(owed),
            timeout,
            "every webhook event delivered",
        )
        return owed

    def deliveries_by_node(self, url: str) -> Counter[str]:
        """Webhook POSTs to *url* answered 2xx, by the node that sent them (httpx logs each
        request of a node's dispatcher in its serve.log)."""
        found: Counter[str] = Counter()
        pattern = re.compile(rf'HTTP Request: POST {re.escape(url)} "HTTP/[\d.]+ 2\d\d')
        for node in self.nodes:
            found[node.home.name] = len(pattern.findall(node.log.read_text(errors="replace")))
        return found

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
        claimed = self.claims()
        self.tally.jobs_by_worker = Counter(
            claimed.get(job_id, "unknown") for job_id, _, status, _ in jobs if status == "done"
        )
        return self.tally


def in_order_per_study(received: list[dict[str, Any]]) -> bool:
    """Whether each study's webhook events arrived in change-feed order."""
    last: dict[str, int] = {}
    for event in received:
        uid = event["StudyInstanceUID"]
        if event["seq"] <= last.get(uid, 0):
            return False
        last[uid] = event["seq"]
    return True


AnySite = TypeVar("AnySite", bound=Site)


@contextlib.contextmanager
def running_site(make: Callable[[PostgresServer, S3Server], AnySite]) -> Iterator[AnySite]:
    """A PostgreSQL cluster and an S3 endpoint, and the site *make* builds on them; all
    stopped after."""
    postgres = PostgresServer()
    site: AnySite | None = None
    try:
        s3 = S3Server()
        try:
            site = make(postgres, s3)
            yield site
        finally:
            if site is not None:
                site.close()
            s3.stop()
    finally:
        postgres.close()
