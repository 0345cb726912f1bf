"""Out-of-range ids on the command line are usage errors, not overflows (issue 10 item 19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "command",
    [
        ["jobs", "show", "99999999999999999999999"],
        ["jobs", "retry", str(2**63)],
        ["jobs", "show", "0"],
        ["webhook", "remove", "99999999999999999999999"],
    ],
    ids=" ".join,
)
def test_out_of_range_ids_are_usage_errors(tmp_path: Path, command: list[str]) -> None:
    env = {**os.environ, "PACS_HOME": str(tmp_path / "home")}
    pacs = [sys.executable, "-m", "pacs.cli"]
    subprocess.run([*pacs, "db", "upgrade"], env=env, check=True, capture_output=True)
    done = subprocess.run([*pacs, *command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "Invalid value" in done.stderr
