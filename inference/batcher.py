"""Step 4: the cross-study batcher, the one place that decides what runs on the device together.

Studies in flight submit their prepared volumes; the batcher cuts them into sliding-window
patches, fills batches of ``batch_size`` from whatever studies are waiting (waiting at most
``max_wait`` seconds for a batch to fill), runs the detector, and routes each patch's
detections back to its study. A study's future resolves when its last patch is done.

The detector sees only batches of patches, never studies, so model code stays batch-agnostic;
and because every layer of our models works per sample, a patch's output does not depend on
its batch-mates (tests/inference/test_batcher.py checks exactly that).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from models.detections import PatchDetections
from models.detector import Detector
from models.sliding import Prepared, patch
from pacs.metrics import metrics, record_gpu_memory

log = logging.getLogger(__name__)


@dataclass
class _Ticket:
    prepared: Prepared
    future: Future[PatchDetections]
    remaining: int
    parts: list[PatchDetections] = field(default_factory=list)
    #: The model seconds of this study: each patch's share of its batch.
    model_seconds: float = 0.0


@dataclass(frozen=True)
class BatcherStats:
    batches: int
    patches: int
    mixed_batches: int
    model_seconds: float


class Batcher:
    """One per process and detector; thread-safe ``submit``."""

    def __init__(self, detector: Detector, batch_size: int = 4, max_wait: float = 0.02) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.detector = detector
        self.batch_size = batch_size
        self.max_wait = max_wait
        self._queue: queue.Queue[tuple[_Ticket, tuple[int, int, int]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._lock = threading.Lock()
        self._batches = self._patches = self._mixed = 0
        self._model_seconds = 0.0
        self._thread.start()

    def submit(self, prepared: Prepared) -> Future[PatchDetections]:
        """Queue all of a study's patches; the future gives its detections in volume voxels."""
        future: Future[PatchDetections] = Future()
        ticket = _Ticket(prepared, future, len(prepared.origins))
        for origin in prepared.origins:
            self._queue.put((ticket, origin))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def stats(self) -> BatcherStats:
        with self._lock:
            return BatcherStats(self._batches, self._patches, self._mixed, self._model_seconds)

    def _collect(self) -> list[tuple[_Ticket, tuple[int, int, int]]] | None:
        first = self._queue.get()
        if first is None:
            return None
        items = [first]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.batch_size:
            timeout = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=max(timeout, 0))
                    if timeout > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # finish this batch, then stop
                break
            items.append(item)
        return items

    def _run(self) -> None:
        size = self.detector.spec.patch_size
        while True:
            items = self._collect()
            if items is None:
                return
            try:
                # (B, 1, Z, Y, X) on the device the volumes were prepared on (the detector's).
                batch = torch.stack([patch(t.prepared, origin, size) for t, origin in items])
                started = time.perf_counter()
                results = self.detector.predict(batch)
                elapsed = time.perf_counter() - started
            except Exception as exc:
                log.exception("batch of %d patches failed", len(items))
                for ticket in {id(t): t for t, _ in items}.values():
                    if not ticket.future.done():
                        ticket.future.set_exception(exc)
                continue
            with self._lock:
                self._batches += 1
                self._patches += len(items)
                self._mixed += len({id(t) for t, _ in items}) > 1
                self._model_seconds += elapsed
            self._observe(len(items), elapsed)
            for (ticket, origin), result in zip(items, results, strict=True):
                if ticket.future.done():  # an earlier batch of this study failed
                    continue
                ticket.parts.append(result.shifted(origin))
                ticket.model_seconds += elapsed / len(items)
                ticket.remaining -= 1
                if ticket.remaining == 0:
                    metrics().study_model_seconds.labels(self.detector.spec.key).observe(
                        ticket.model_seconds
                    )
                    ticket.future.set_result(PatchDetections.concatenate(ticket.parts))

    def _observe(self, size: int, elapsed: float) -> None:
        """Batch fill, patches, model time and (on CUDA) device memory (``pacs.metrics``)."""
        found = metrics()
        found.batches.inc()
        found.batch_fill.observe(size / self.batch_size)
        found.patches.inc(size)
        found.model_seconds.inc(elapsed)
        record_gpu_memory(self.detector.device)
