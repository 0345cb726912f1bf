"""Faults under load, nothing lost: a short seeded schedule of every fault (the long one is
`bench/faults.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import FAULTS, fault_site
from tests.faults.site import STUDY_INSTANCES, write_studies

pytestmark = pytest.mark.slow

SEED = 13
STUDIES = 3


def test_every_fault_under_load_loses_nothing(tmp_path: Path) -> None:
    folders = write_studies(tmp_path / "studies", STUDIES, SEED)
    with fault_site(tmp_path / "site") as site:
        # Bounded for the suite: about 2 minutes on a loaded 2-core machine.
        tally = site.run(folders, list(FAULTS), SEED, budget=240)
        site.settle(timeout=180)
        tally = site.verify(folders)
    assert tally.acknowledged == tally.instances == STUDIES * STUDY_INSTANCES
    assert sum(tally.kills.values()) == 4 and sum(tally.restarts.values()) == len(FAULTS)
    assert tally.ai_runs >= STUDIES
