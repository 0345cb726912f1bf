"""``pacs model ...``: the model registry on the command line (part of the composition root)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from models.registry import BUILTIN, Registry
from pacs.settings import PacsSettings

model_app = typer.Typer(help="Nodule detection models: registry and cards.", no_args_is_help=True)


def registry(settings: PacsSettings) -> Registry:
    """Built-in models, then this site's (which win for the same name and version)."""
    return Registry([BUILTIN, settings.home / "models"])


@model_app.command("list")
def model_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Models in the registry (built in, and this site's under $PACS_HOME/models)."""
    entries = registry(PacsSettings()).entries()
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
    entry = registry(PacsSettings()).get(name, version)
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

    entry = import_bundle(bundle, PacsSettings().home / "models", version)
    typer.echo(f"registered {entry.spec.key} (sha256 {entry.spec.sha256}) in {entry.folder}")
