"""The nodule-detection job: a stable study in, findings in the index out.

select series -> volume -> preprocess -> batched model -> post-process -> findings, each a
typed step (inference.selection, inference.loading, models.sliding, inference.batcher).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

from pydicom import Dataset

from inference.batcher import Batcher
from inference.dicom_results import Outlines, build_results
from inference.errors import UnreadableSeries
from inference.loading import build_volume, read_series
from inference.priors import annotate, compare, nodules_of, register
from inference.selection import SelectionRules, select_series
from models.characterise import NoduleCharacter, characterise
from models.detections import Candidate
from models.detector import Detector
from models.nodule_type import TypeClassifier
from models.sliding import prepare, rescored, to_candidates
from models.volume import Volume
from pacs.index import series_of_study
from pacs.ingest import Archive, Source, delete_series
from pacs.jobs import Job
from pacs.results import (
    NODULE_DETECTION,
    Character,
    Finding,
    NewRun,
    PriorComparison,
    RunOutcome,
    ai_series_of_study,
    prior_study,
    save_run,
)

log = logging.getLogger(__name__)

__all__ = ["NODULE_DETECTION", "NoduleDetection", "compare_with_prior"]


class NoduleDetection:
    """Job handler; several may run at once in threads, sharing one batcher."""

    def __init__(
        self,
        archive: Archive,
        detector: Detector,
        batcher: Batcher,
        rules: SelectionRules,
        io_threads: int = 4,
        dicom_results: bool = True,
    ) -> None:
        self.archive = archive
        self.db, self.blobs = archive.db, archive.blobs
        self.detector, self.batcher, self.rules = detector, batcher, rules
        self.dicom_results = dicom_results
        self.types = TypeClassifier.load()
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
        model = (spec.name, spec.version)
        if selection.chosen is None:
            run = save_run(
                self.db,
                NewRun(
                    job.id,
                    study,
                    None,
                    model,
                    RunOutcome.NO_ELIGIBLE_SERIES,
                    selection.rejections,
                    [],
                    time.monotonic() - started,
                    report_threshold=spec.report_threshold,
                ),
            )
            log.info("study %s: no eligible series (%d rejected)", study, len(selection.rejections))
            return f"ai_run:{run}"
        series_uid = selection.chosen.SeriesInstanceUID
        source = datasets.pop(series_uid)
        del datasets
        # 2. volume; 3. preprocess (on the detector's device)
        volume = build_volume(source, self.pool)
        prepared = prepare(volume, spec, self.detector.device)
        # 4. batched model execution, shared with the other studies in flight
        detections = self.batcher.submit(prepared).result()
        # 5. post-process: NMS across patches, centres to patient mm, the second stage
        candidates = rescored(self.detector, volume, to_candidates(prepared.grid, detections, spec))
        # 5b. characterise each reported finding on its outline (type, axes, volume)
        outlined = time.monotonic()
        findings, masks = [], {}
        for candidate in candidates:
            if candidate.probability < spec.report_threshold:
                continue
            character = characterise(volume, candidate.centre, candidate.diameter_mm, self.types)
            finding = _finding(candidate, character)
            findings.append(finding)
            if character.outlined:
                masks[finding.tracking_uid] = (character.mask, character.offset)
        log.debug(
            "study %s: characterised %d finding(s) in %.2f s",
            study,
            len(findings),
            time.monotonic() - outlined,
        )
        # 5c. against the patient's earlier analysed CT, when there is one
        findings, prior = compare_with_prior(self.archive, self.pool, study, volume, findings)
        # 6. results back into the study as DICOM (SR always, SEG when there is a nodule),
        # through the one ingest path; then the run that points at them; then older results go.
        stored: list[tuple[str, str]] = []
        if self.dicom_results:
            objects = build_results(source, findings, spec, Outlines(volume.affine, masks))
            stored = [self._store(ds) for ds in (objects.sr, objects.seg) if ds is not None]
        sops = [sop for _, sop in stored] + [None, None]
        run = save_run(
            self.db,
            NewRun(
                job.id,
                study,
                series_uid,
                model,
                RunOutcome.ANALYSED,
                selection.rejections,
                findings,
                time.monotonic() - started,
                sops[0],
                sops[1],
                report_threshold=spec.report_threshold,
                prior=prior,
            ),
        )
        if self.dicom_results:
            self._supersede(study, keep={series for series, _ in stored})
        log.info(
            "study %s series %s: %d finding(s) in %.1f s",
            study,
            series_uid,
            len(findings),
            time.monotonic() - started,
        )
        return f"ai_run:{run}"

    def _store(self, ds: Dataset) -> tuple[str, str]:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        result = self.archive.store(buffer.getvalue(), Source("AI"))
        return result.SeriesInstanceUID, result.SOPInstanceUID

    def _supersede(self, study: str, keep: set[str]) -> None:
        """Delete our earlier result series of the study: a re-run replaces, never piles up."""
        with self.db.read() as conn:
            earlier = set(ai_series_of_study(conn, study)) - keep
        for series_uid in earlier:
            removed = delete_series(self.archive, series_uid, "superseded by a newer AI run")
            log.info("study %s: removed %d superseded result(s) in %s", study, removed, series_uid)


def _finding(candidate: Candidate, character: NoduleCharacter) -> Finding:
    """The finding to store; its character only when the nodule was outlined (not the
    detector's sphere)."""
    x, y, z = candidate.centre
    if not character.outlined:
        return Finding(x, y, z, candidate.diameter_mm, candidate.probability)
    measured = Character(
        character.type,
        character.type_probability,
        character.long_axis_mm,
        character.short_axis_mm,
        character.mean_diameter_mm,
        character.volume_mm3,
        character.solid_diameter_mm,
    )
    return Finding(x, y, z, candidate.diameter_mm, candidate.probability, character=measured)


def compare_with_prior(
    archive: Archive,
    pool: ThreadPoolExecutor,
    study: str,
    volume: Volume,
    findings: list[Finding],
) -> tuple[list[Finding], PriorComparison | None]:
    """The findings with their change against the patient's earlier analysed CT (as they
    were when there is none, or its series cannot be read or registered: the comparison is
    an addition, never a reason for the job to fail)."""
    with archive.db.read() as conn:
        earlier = prior_study(conn, study)
        if earlier is None:
            return findings, None
        entries = [
            e
            for e in series_of_study(conn, earlier.StudyInstanceUID)
            if e.SeriesInstanceUID == earlier.run.SeriesInstanceUID
        ]
    if not entries:
        return findings, None
    started = time.monotonic()
    try:
        _, datasets = read_series(entries[0], archive.blobs.get, pool)
        registration = register(volume, build_volume(datasets, pool))
    except (UnreadableSeries, RuntimeError) as exc:  # SimpleITK raises RuntimeError
        log.warning("study %s: prior %s not compared: %s", study, earlier.StudyInstanceUID, exc)
        return findings, None
    current, before = nodules_of(findings), nodules_of(earlier.run.findings)
    comparison = compare(
        current, earlier.interval_days, before, registration, earlier.StudyInstanceUID
    )
    log.info(
        "study %s: compared with %s (%s days) in %.1f s",
        study,
        earlier.StudyInstanceUID,
        earlier.interval_days,
        time.monotonic() - started,
    )
    prior = PriorComparison(earlier.StudyInstanceUID, earlier.interval_days)
    return annotate(findings, earlier.run.findings, comparison), prior
