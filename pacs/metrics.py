"""Prometheus metrics of the archive's processes (``prometheus-client``).

Every process records into the same metric objects (:func:`metrics`). ``pacs serve`` runs
several processes (the receivers of PACS_RECEIVERS, the API, the sweeper, in-process workers),
so it turns on prometheus-client's multiprocess mode (:func:`enable_multiprocess`): each
process writes its samples to memory-mapped files under ``$PACS_HOME/metrics``, and the API's
``/metrics`` adds them up. A ``pacs worker`` with the same PACS_HOME joins them.

prometheus-client chooses between its in-process and its multiprocess values when it is first
imported, by the environment variable ``PROMETHEUS_MULTIPROC_DIR``: so this module imports it
only inside :func:`metrics` and :func:`exposition`, after a command has set that variable.

What the index knows (queue depth, webhook backlog) is read at scrape time by
:class:`IndexCollector`, never counted in a process that might die.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text

from pacs.files import make_private_dirs
from pacs.index.database import Database, as_utc
from pacs.index.schema import job, webhook_delivery

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Tries to read the multiprocess files (see exposition()).
MULTIPROC_READS = 5
#: Job states whose rows are counted at scrape time (done and superseded only grow).
OPEN_JOB_STATES = ("queued", "running", "failed")
# Seconds: sub-millisecond ingest to minutes-long jobs.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
RATIO_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def enable_multiprocess(home: Path) -> Path:
    """Share metrics between this process and the processes it starts (spawned children
    inherit the environment) through ``$PACS_HOME/metrics``; files of processes no longer
    running are removed first (their counters restart from zero, which Prometheus' ``rate``
    takes as a reset). Call before anything records a metric."""
    directory = (home / "metrics").resolve()
    make_private_dirs(directory)
    for path in directory.glob("*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    metrics()  # this process's files now, before threads that record or read them start
    for path in directory.glob(f"*_{os.getpid()}.db"):
        path.chmod(0o600)  # prometheus_client makes them at the umask; the home is private
    return directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    """The archive's metric objects (one set per process; see :func:`metrics`)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.instances: Counter = Counter(
            "pacs_instances_received",
            "Instances received, by protocol (dimse, stow), the status answered (DIMSE status "
            "or STOW-RS FailureReason, 0x0000 when stored) and outcome (stored, refused).",
            ["protocol", "status", "outcome"],
        )
        self.ingest_seconds: Histogram = Histogram(
            "pacs_ingest_seconds",
            "Seconds the ingest path took to store one instance durably (parse, blob, index), "
            "by source protocol.",
            ["protocol"],
            buckets=FAST_BUCKETS,
        )
        self.http_requests: Counter = Counter(
            "pacs_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
        )
        self.http_seconds: Histogram = Histogram(
            "pacs_http_request_seconds",
            "Seconds from request to the end of the response, by method and route template.",
            ["method", "route"],
            buckets=FAST_BUCKETS,
        )
        self.job_seconds: Histogram = Histogram(
            "pacs_job_seconds",
            "Seconds a worker ran a job, by kind and outcome (done, superseded, queued: failed "
            "and to be retried, failed, lost: lease lost).",
            ["kind", "outcome"],
            buckets=SLOW_BUCKETS,
        )
        self.job_wait_seconds: Histogram = Histogram(
            "pacs_job_wait_seconds",
            "Seconds from a job's creation to its claim, by kind.",
            ["kind"],
            buckets=SLOW_BUCKETS,
        )
        self.job_claims: Counter = Counter(
            "pacs_job_claims",
            "Jobs claimed by a worker, by kind; reclaim=true when a lease had expired.",
            ["kind", "reclaim"],
        )
        self.batches: Counter = Counter(
            "pacs_inference_batches", "Batches the cross-study batcher ran on the model.", []
        )
        self.batch_fill: Histogram = Histogram(
            "pacs_inference_batch_fill_ratio",
            "Patches in a batch over PACS_AI_BATCH_SIZE.",
            [],
            buckets=RATIO_BUCKETS,
        )
        self.patches: Counter = Counter(
            "pacs_inference_patches",
            "Patches run through the model (rate(): patches per second).",
            [],
        )
        self.model_seconds: Counter = Counter(
            "pacs_inference_model_seconds",
            "Seconds the model spent on batches (rate(): device busy fraction).",
            [],
        )
        self.study_model_seconds: Histogram = Histogram(
            "pacs_inference_study_model_seconds",
            "Model seconds per study (each patch's share of its batch), by model.",
            ["model"],
            buckets=SLOW_BUCKETS,
        )
        self.gpu_memory: Gauge = Gauge(
            "pacs_inference_gpu_memory_bytes",
            "CUDA memory of an inference process after its last batch (allocated, reserved, "
            "peak reserved), by device.",
            ["device", "kind"],
            multiprocess_mode="livemax",
        )
        self.stability_lag: Histogram = Histogram(
            "pacs_stability_lag_seconds",
            "Seconds a study was marked stable after it became due (last instance + "
            "PACS_STABLE_AGE).",
            [],
            buckets=FAST_BUCKETS,
        )


@functools.cache
def metrics() -> Metrics:
    """This process's metric objects, made on first use (after :func:`enable_multiprocess`)."""
    return Metrics()


def status_label(code: int) -> str:
    """A DIMSE status or FailureReason as the label value: ``0xA700``."""
    return f"0x{code:04X}"


def record_instance(protocol: str, code: int) -> None:
    """Count one instance answered with *code* (0x0000 and the 0xB... warnings: stored)."""
    stored = code == 0 or (code >> 12) == 0xB
    metrics().instances.labels(
        protocol, status_label(code), "stored" if stored else "refused"
    ).inc()


def record_gpu_memory(device: Any) -> None:
    """Set the CUDA memory gauges of *device* (a ``torch.device``); nothing off CUDA."""
    if getattr(device, "type", None) != "cuda":
        return
    import torch

    gauge, name = metrics().gpu_memory, str(device)
    gauge.labels(name, "allocated").set(torch.cuda.memory_allocated(device))
    gauge.labels(name, "reserved").set(torch.cuda.memory_reserved(device))
    gauge.labels(name, "peak_reserved").set(torch.cuda.max_memory_reserved(device))


class IndexCollector:
    """Gauges read from the index at scrape time: open jobs by kind and state with the age of
    the oldest, and the webhook backlog. Two grouped queries over indexed columns; when the
    index does not answer, ``pacs_index_up`` is 0 and the rest is left out."""

    def __init__(self, db: Database, timeout: float = 2.0) -> None:
        self.db, self.timeout = db, timeout

    def describe(self) -> list[Any]:
        return []  # unchecked: the families depend on what the index holds

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("pacs_index_up", "Whether the index answered this scrape.")
        depth = GaugeMetricFamily(
            "pacs_jobs",
            "Jobs by kind and state (queued, running, failed).",
            labels=["kind", "status"],
        )
        oldest = GaugeMetricFamily(
            "pacs_job_oldest_seconds",
            "Age of the oldest job by kind and state (since its creation).",
            labels=["kind", "status"],
        )
        backlog = GaugeMetricFamily("pacs_webhook_backlog", "Webhook deliveries waiting (pending).")
        backlog_age = GaugeMetricFamily(
            "pacs_webhook_backlog_oldest_seconds", "Age of the oldest pending webhook delivery."
        )
        now = datetime.now(UTC)
        try:
            with self.db.read() as conn:
                if conn.dialect.name == "postgresql":
                    ms = int(self.timeout * 1000)
                    conn.execute(text(f"SET LOCAL statement_timeout = {ms}"))
                jobs = conn.execute(
                    select(job.c.kind, job.c.status, func.count(), func.min(job.c.created_at))
                    .where(job.c.status.in_(OPEN_JOB_STATES))
                    .group_by(job.c.kind, job.c.status)
                ).all()
                pending = conn.execute(
                    select(func.count(), func.min(webhook_delivery.c.created_at)).where(
                        webhook_delivery.c.status == "pending"
                    )
                ).one()
        except Exception as exc:  # the index may be down: say so, do not fail the scrape
            log.warning("metrics: the index did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        seen = {(kind, status) for kind, status, _, _ in jobs}
        for kind, status, count, first in jobs:
            depth.add_metric([kind, status], count)
            oldest.add_metric([kind, status], (now - as_utc(first)).total_seconds())
        for kind in {kind for kind, _ in seen}:  # a state emptied shows as 0, not as gone
            for status in OPEN_JOB_STATES:
                if (kind, status) not in seen:
                    depth.add_metric([kind, status], 0)
        backlog.add_metric([], pending[0])
        age = 0.0 if pending[1] is None else (now - as_utc(pending[1])).total_seconds()
        backlog_age.add_metric([], age)
        yield from (up, depth, oldest, backlog, backlog_age)


class _ProcessFiles:
    """The samples of every process's files, as prometheus-client's MultiProcessCollector
    adds them up, leaving out a file a process has only just created (still empty, or a
    process killed at that instant): reading it would fail the whole scrape."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = []
        for path in self.directory.glob("*.db"):
            with contextlib.suppress(FileNotFoundError):  # its process ended, files removed
                if path.stat().st_size > 0:
                    files.append(str(path))
        return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]


def exposition(db: Database | None = None) -> tuple[bytes, str]:
    """The text exposition of every process's metrics (multiprocess mode) or this process's,
    and the index's (:class:`IndexCollector`), with its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry
    from prometheus_client import generate_latest as render

    metrics()  # the families exist (at zero) before anything happened
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        shared = CollectorRegistry(auto_describe=False)
        shared.register(_ProcessFiles(Path(directory)))
        # A process may be creating a file as we read it (empty for an instant): read again.
        for attempt in range(MULTIPROC_READS):
            try:
                body = render(shared)
                break
            except (struct.error, ValueError, OSError):
                if attempt == MULTIPROC_READS - 1:
                    raise
                time.sleep(0.05)
    else:
        body = render(REGISTRY)
    if db is not None:
        scraped = CollectorRegistry(auto_describe=False)
        scraped.register(IndexCollector(db))
        body += render(scraped)
    return body, CONTENT_TYPE_LATEST
