"""The per-series metadata cache answers only within a facility scope."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs.facilities import Scope
from pacs.ingest import Archive, Source
from pacs.metadata import series_metadata_of
from pacs.sharing import share_study
from tests.conftest import make_archive
from tests.dicom import derived, encode


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    built = make_archive(f"sqlite:///{tmp_path / 'index.db'}", f"file://{tmp_path / 'blobs'}")
    yield built
    built.db.dispose()


def test_a_cached_series_is_served_only_to_a_scope_that_sees_its_study(archive: Archive) -> None:
    ds = derived(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    archive.store(encode(ds), Source("STOW", facility="north"))
    uids = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    north, south = Scope.of(["north"]), Scope.of(["south"])
    built = series_metadata_of(archive, north, *uids)
    assert built is not None
    # The body is cached now: another facility still gets nothing, not even its ETag.
    assert series_metadata_of(archive, south, *uids) is None
    assert series_metadata_of(archive, Scope.of([]), *uids) is None
    assert series_metadata_of(archive, Scope.everything(), *uids) == built
    archive.facility_id("south")  # registered (on first use), so a grant can name it
    with archive.db.write() as conn:
        share_study(conn, north, uids[0], "south", "test")
    assert series_metadata_of(archive, south, *uids) == built
