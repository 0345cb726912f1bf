"""The weights checksum each model name and version runs with, recorded in the index.

Site models live on each worker's host (``$PACS_HOME/models``). The first worker to run a
model name and version records its weights' SHA-256 here; every later worker, on any host,
must run the same bytes under that name and version, or it is refused
(:class:`ModelMismatch`): two hosts whose findings differ for the same model would otherwise
be indistinguishable in the results. New weights get a new version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pacs.errors import ArchiveError
from pacs.index import Database
from pacs.index.schema import model_checksum

log = logging.getLogger(__name__)


class ModelMismatch(ArchiveError):
    """This host's weights of a model name and version differ from those the index records."""


@dataclass(frozen=True)
class RecordedModel:
    name: str
    version: str
    sha256: str
    recorded_by: str
    recorded_at: datetime


def describe(name: str, version: str, sha256: str) -> str:
    """How a job row names the model it ran with: ``name version sha256:<digest>``."""
    return f"{name} {version} sha256:{sha256}"


def check_model(db: Database, name: str, version: str, sha256: str, owner: str) -> RecordedModel:
    """Record *sha256* for *name* and *version* if nothing is recorded yet, else check it.

    Raises
    ------
    ModelMismatch
        The index records other weights for this name and version.
    """
    for _ in range(2):  # a concurrent first worker may insert between our read and write
        with db.write() as conn:
            row = conn.execute(
                select(model_checksum).where(
                    model_checksum.c.name == name, model_checksum.c.version == version
                )
            ).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        now = datetime.now(UTC)
                        conn.execute(
                            model_checksum.insert().values(
                                name=name,
                                version=version,
                                sha256=sha256,
                                recorded_by=owner,
                                recorded_at=now,
                            )
                        )
                except IntegrityError:
                    continue
                log.info(
                    "model %s %s: recorded sha256 %s (first run by %s)",
                    name,
                    version,
                    sha256,
                    owner,
                )
                return RecordedModel(name, version, sha256, owner, now)
        recorded = RecordedModel(
            row.name, row.version, row.sha256, row.recorded_by, row.recorded_at
        )
        if recorded.sha256 != sha256:
            raise ModelMismatch(
                f"model {name} {version}: this host's weights have sha256 {sha256}, but the "
                f"index records {recorded.sha256} (first run by {recorded.recorded_by}): "
                "install the same weights, or register these under a new version"
            )
        return recorded
    raise ModelMismatch(f"model {name} {version}: its checksum could not be recorded")
