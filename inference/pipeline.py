"""The nodule-detection job: a stable study in, findings in the index out.

select series -> volume -> preprocess -> batched model -> post-process -> findings, each a
typed step (inference.selection, inference.loading, models.sliding, inference.batcher).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from inference.batcher import Batcher
from inference.loading import build_volume, read_series
from inference.selection import SelectionRules, select_series
from models.detections import Candidate
from models.detector import Detector
from models.sliding import prepare, to_candidates
from pacs.index import Database, series_of_study
from pacs.jobs import Job
from pacs.results import ANALYSED, NO_ELIGIBLE_SERIES, NODULE_DETECTION, Finding, save_run
from pacs.storage.base import BlobStore

log = logging.getLogger(__name__)

__all__ = ["NODULE_DETECTION", "NoduleDetection"]


class NoduleDetection:
    """Job handler; several may run at once in threads, sharing one batcher."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        detector: Detector,
        batcher: Batcher,
        rules: SelectionRules,
        io_threads: int = 4,
    ) -> None:
        self.db, self.blobs = db, blobs
        self.detector, self.batcher, self.rules = detector, batcher, rules
        self.pool = ThreadPoolExecutor(io_threads, thread_name_prefix="fetch-decode")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __call__(self, job: Job) -> str:
        study = job.StudyInstanceUID
        if study is None:
            raise ValueError(f"job {job.id} names no study")
        started = time.monotonic()
        spec = self.detector.spec
        # 1. series selection
        with self.db.read() as conn:
            entries = series_of_study(conn, study)
        headers, datasets = {}, {}
        for entry in entries:
            headers[entry.SeriesInstanceUID], datasets[entry.SeriesInstanceUID] = read_series(
                entry, self.blobs.get, self.pool
            )
        selection = select_series(list(headers.values()), self.rules)
        if selection.chosen is None:
            run = save_run(
                self.db,
                job.id,
                study,
                None,
                (spec.name, spec.version),
                NO_ELIGIBLE_SERIES,
                selection.rejections,
                [],
                time.monotonic() - started,
            )
            log.info("study %s: no eligible series (%d rejected)", study, len(selection.rejections))
            return f"ai_run:{run}"
        series_uid = selection.chosen.SeriesInstanceUID
        # 2. volume; 3. preprocess (on the detector's device)
        volume = build_volume(datasets[series_uid], self.pool)
        del datasets
        prepared = prepare(volume, spec, self.detector.device)
        # 4. batched model execution, shared with the other studies in flight
        detections = self.batcher.submit(prepared).result()
        # 5. post-process: NMS across patches, centres to patient mm
        candidates = to_candidates(prepared.grid, detections, spec)
        findings = [_finding(c) for c in candidates]
        run = save_run(
            self.db,
            job.id,
            study,
            series_uid,
            (spec.name, spec.version),
            ANALYSED,
            selection.rejections,
            findings,
            time.monotonic() - started,
        )
        log.info(
            "study %s series %s: %d finding(s) in %.1f s",
            study,
            series_uid,
            len(findings),
            time.monotonic() - started,
        )
        return f"ai_run:{run}"


def _finding(candidate: Candidate) -> Finding:
    x, y, z = candidate.centre
    return Finding(x, y, z, candidate.diameter_mm, candidate.probability)
