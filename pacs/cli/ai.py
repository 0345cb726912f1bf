"""The AI commands: ``pacs model``, ``pacs worker``, ``pacs findings``, and the inference
runtime that ``pacs worker`` runs and ``pacs serve`` starts in-process (PACS_WORKERS)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from models.registry import BUILTIN, Registry
from pacs.cli.common import (
    AsJson,
    configure_logging,
    load_settings,
    open_archive,
    opened_index,
    when_available,
)
from pacs.metrics import enable_multiprocess
from pacs.settings import PacsSettings

log = logging.getLogger(__name__)

model_app = typer.Typer(help="Nodule detection models: registry and cards.", no_args_is_help=True)


def registry(settings: PacsSettings) -> Registry:
    """Built-in models, then this site's (which win for the same name and version)."""
    return Registry([BUILTIN, settings.home / "models"])


@model_app.command("list")
def model_list(as_json: AsJson = False) -> None:
    """Models in the registry (built in, and this site's under $PACS_HOME/models)."""
    entries = registry(load_settings()).entries()
    if as_json:
        typer.echo(json.dumps([e.spec.model_dump(mode="json") for e in entries], indent=2))
        return
    for e in entries:
        s = e.spec
        spacing = "x".join(f"{v:g}" for v in s.spacing_mm)
        typer.echo(
            f"{s.key:<40} {s.architecture.value:<16} spacing {spacing} mm"
            f"  sha256 {s.sha256[:12]}  {e.folder}"
        )


@model_app.command("show")
def model_show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str | None, typer.Option(help="Version (default: newest).")] = None,
) -> None:
    """A model's configuration and its model card."""
    entry = registry(load_settings()).get(name, version)
    typer.echo(json.dumps(entry.spec.model_dump(mode="json"), indent=2))
    typer.echo("")
    typer.echo(entry.card or "(no model card)")


@model_app.command("add")
def model_add(
    bundle: Annotated[Path, typer.Option(help="A MONAI lung_nodule_ct_detection bundle folder.")],
    version: Annotated[str | None, typer.Option(help="Version to register it as.")] = None,
) -> None:
    """Register a site's copy of MONAI's lung_nodule_ct_detection bundle (weights checked)."""
    from models.bundle import import_bundle

    entry = import_bundle(bundle, load_settings().home / "models", version)
    typer.echo(f"registered {entry.spec.key} (sha256 {entry.spec.sha256}) in {entry.folder}")


class InferenceRuntime:
    """Detector + batcher + job handler + worker threads: what `pacs worker` runs, and what
    `pacs serve` runs in-process (PACS_WORKERS)."""

    def __init__(self, settings: PacsSettings, concurrency: int) -> None:
        from inference.batcher import Batcher
        from inference.pipeline import NoduleDetection
        from inference.selection import SelectionRules
        from inference.settings import InferenceSettings
        from models.detector import load_detector

        ai = InferenceSettings()
        entry = registry(settings).get(ai.model, ai.model_version)
        self.detector = load_detector(entry, ai.torch_device())
        self.batcher = Batcher(self.detector, ai.batch_size, ai.batch_wait_ms / 1000)
        self.archive = when_available(lambda: open_archive(settings), "inference worker")
        self.db = self.archive.db
        rules = SelectionRules(ai.min_slices, ai.max_slice_spacing_mm, ai.min_coverage_mm)
        self.handler = NoduleDetection(self.archive, self.detector, self.batcher, rules)
        self.concurrency = concurrency
        self.lease = timedelta(seconds=ai.job_lease_s)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Check the model's checksum against the index's record, then start the workers.

        Raises
        ------
        ModelMismatch
            The index records other weights for this model name and version: no job runs.
        """
        from pacs.jobs import Worker
        from pacs.model_checksums import check_model, describe
        from pacs.results import NODULE_DETECTION

        spec = self.detector.spec
        host = f"{socket.gethostname()}:{os.getpid()}"
        # The weights were checked against the registry's SHA-256 when loaded; this checks
        # that every host runs the same bytes under this name and version.
        when_available(
            lambda: check_model(self.db, spec.name, spec.version, spec.sha256, host),
            "inference worker",
        )
        model = describe(spec.name, spec.version, spec.sha256)
        for i in range(self.concurrency):
            owner = f"{host}:{i}"
            worker = Worker(
                self.db, {NODULE_DETECTION: self.handler}, owner, self.lease, model=model
            )
            thread = threading.Thread(
                target=worker.run, args=(self._stop.is_set, 0.5), name=f"worker-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "inference: %s (sha256 %s) on %s, %d worker thread(s)",
            spec.key,
            spec.sha256,
            self.detector.device,
            self.concurrency,
        )

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self.batcher.close()
        self.handler.close()
        self.db.dispose()


def worker_command(
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Jobs at once (default PACS_WORKER_CONCURRENCY)."),
    ] = None,
) -> None:
    """Run inference workers in this process until SIGTERM/SIGINT (e.g. on a GPU host)."""
    from inference.settings import InferenceSettings

    configure_logging()
    settings = load_settings()
    enable_multiprocess(settings.home)  # its metrics join those of a `pacs serve` of this home
    runtime = InferenceRuntime(settings, concurrency or InferenceSettings().worker_concurrency)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stopping.set())
    runtime.start()
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        runtime.stop()


def findings_command(
    study: Annotated[str, typer.Argument(help="StudyInstanceUID.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (as the API answers).")
    ] = False,
) -> None:
    """A study's AI findings (patient LPS mm) and its job status."""
    from pacs.results import NODULE_DETECTION, study_findings

    with opened_index() as db, db.read() as conn:
        found = study_findings(conn, study, NODULE_DETECTION)
    if found is None:
        typer.echo(f"no study {study}", err=True)
        raise typer.Exit(1)
    if as_json:
        from viewer_api.findings import FindingsResponse

        typer.echo(FindingsResponse.of(found).model_dump_json(indent=2))
        return
    status = "not_queued" if found.status is None else found.status.value
    typer.echo(f"study {study}: job {status}")
    run = found.run
    if run is None:
        return
    typer.echo(
        f"run {run.id} ({run.model_name} {run.model_version}, {run.outcome.value}, "
        f"{run.seconds:.3f} s) series {run.SeriesInstanceUID}"
    )
    for rejected in run.rejections:
        typer.echo(f"  not analysed: {rejected.SeriesInstanceUID}: {rejected.reason}")
    if not run.findings:
        typer.echo("  no nodules found")
    if run.prior is not None:
        typer.echo(
            f"  compared with prior study {run.prior.StudyInstanceUID} "
            f"({run.prior.interval_days} days earlier)"
        )
    for f in run.findings:
        typer.echo(
            f"  nodule at ({f.x:.1f}, {f.y:.1f}, {f.z:.1f}) mm LPS, "
            f"{f.diameter_mm:.1f} mm, p={f.probability:.3f}"
            + (f", {f.describe_change()}" if f.change else "")
        )
        c = f.character
        if c is not None:
            solid = "" if c.solid_diameter_mm is None else f", solid {c.solid_diameter_mm:.1f} mm"
            typer.echo(
                f"    {c.type} (p={c.type_probability:.2f}), long {c.long_axis_mm:.1f} x short "
                f"{c.short_axis_mm:.1f} mm, mean {c.mean_diameter_mm:.1f} mm, "
                f"{c.volume_mm3:.0f} mm3{solid}"
            )
