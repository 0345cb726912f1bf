"""Fuzzing fixtures: a Hypothesis profile that is reproducible in CI, one archive server for
the whole package.

``PACS_FUZZ_EXAMPLES`` raises the number of examples per property (``bench/fuzz.py`` runs
1,000 by default); otherwise each property runs a small derandomized set, so every run of
``make test`` tries the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.servers import PacsServer

settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("PACS_FUZZ_EXAMPLES", "40")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("fuzz")


@pytest.fixture(scope="package")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    """One ``pacs serve`` for every fuzz test (a server per test would dominate the time)."""
    server = PacsServer(tmp_path_factory.mktemp("fuzz") / "home").start()
    yield server
    server.stop()


REGRESSIONS = Path(__file__).resolve().parent / "regressions"
