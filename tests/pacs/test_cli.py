"""The `pacs` command line as an administrator uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from pacs.settings import PacsSettings
from tests.servers import DATA, PacsServer, PostgresServer, free_port


def pacs(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return PacsServer(home, env).pacs(*args, check=False)


def test_db_upgrade_is_idempotent_and_stats_start_at_zero(tmp_path: Path) -> None:
    for _ in range(2):
        result = pacs(tmp_path, "db", "upgrade")
        assert (result.returncode, result.stdout.strip()) == (0, "index schema is up to date")
    stats = json.loads(pacs(tmp_path, "stats", "--json").stdout)
    assert stats == {"patients": 0, "studies": 0, "series": 0, "instances": 0, "bytes": 0}
    assert "instances: 0" in pacs(tmp_path, "stats").stdout


def test_send_and_echo_import_neither_the_index_nor_the_server() -> None:
    """`pacs send` starts in pydicom's and pynetdicom's import time, not the whole archive's."""
    probe = (
        "import sys, pacs.cli; pacs.cli.build(sys.argv[1]);"
        "print(sorted(m for m in ('sqlalchemy', 'pacs.index', 'pacs.ingest', 'pacs.settings',"
        " 'pacs.dimse.server', 'fastapi', 'torch') if m in sys.modules))"
    )
    for command in ("send", "echo"):
        result = subprocess.run(
            [sys.executable, "-c", probe, command], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "[]", (command, result.stdout)
    full = subprocess.run(
        [sys.executable, "-c", probe.replace("sys.argv[1]", "None")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pacs.index" in full.stdout  # the probe can see an import


def test_send_runs_without_numpy_and_requests_and_exits_without_teardown() -> None:
    """pydicom imports numpy and requests when installed; `pacs send` needs neither (~0.3 s of
    start-up), and it ends with os._exit() once its output is flushed (~0.15 s)."""
    probe = (
        "import os, sys; from pacs.cli import main; exit_now = os._exit\n"
        "def ending(code):\n"
        "    print('exit', code, sorted(m for m in ('numpy', 'requests', 'pydicom')"
        " if sys.modules.get(m) is not None), flush=True)\n"
        "    exit_now(code)\n"
        "os._exit = ending; sys.argv = ['pacs', *sys.argv[1:]]; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "send", "--help"], capture_output=True, text=True
    )
    assert result.stdout.strip().splitlines()[-1] == "exit 0 ['pydicom']", result.stdout
    result = subprocess.run(
        [sys.executable, "-c", probe, "send", "--no-such-option"], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout.strip()) == (2, "exit 2 ['pydicom']")
    assert "No such option" in result.stderr
    result = subprocess.run(  # the archive's commands: imports and teardown as usual
        [sys.executable, "-c", probe, "stats", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "exit" not in result.stdout.strip().splitlines()[-1]


FIRST_IMPORT = """
import os, sys, traceback
from pathlib import Path
# Third-party libraries first: only the order in which our own modules load is under test.
import fastapi, httpx, minio, numpy, pydantic, pydicom, pynetdicom, rich, sqlalchemy, typer
root = Path(sys.argv[1])
failed = []
for path in sorted(root.glob("pacs/**/*.py")):
    if "migrations" in path.parts:  # Alembic's scripts, run by Alembic
        continue
    name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    child = os.fork()
    if child == 0:
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(child, 0)[1]:
        failed.append(name)
print(failed)
"""


def test_every_module_imports_first() -> None:
    """Each pacs module imported first in a fresh process (forked after the third-party
    libraries): the lazily loaded packages and commands (`pacs send` builds only its command)
    change the order modules load in, and a cycle between two of them then shows (`pacs
    webhook add` once failed so: pacs.changefeed -> pacs.index -> pacs.changefeed)."""
    result = subprocess.run(
        [sys.executable, "-c", FIRST_IMPORT, str(Path(__file__).resolve().parents[2])],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stderr[-2000:]


def test_echo_and_send_to_nobody_fail_clearly(tmp_path: Path) -> None:
    port = str(free_port())
    result = pacs(tmp_path, "echo", "--port", port)
    assert result.returncode == 1
    assert "association with PACS@127.0.0.1" in result.stderr
    result = pacs(tmp_path, "send", str(DATA / "edge-cases" / "CT_small.dcm"), "--port", port)
    assert result.returncode == 1
    assert "sent 0" in result.stdout
    assert "failed 1" in result.stdout


def test_send_summary_counts_sent_and_skipped(tmp_path: Path) -> None:
    server = PacsServer(tmp_path / "home").start()
    try:
        folder = DATA / "cxr" / "siim-cr-chest"  # two versions of one SOP instance
        server.pacs("ae", "add", "PACS_SCU", "127.0.0.1", "104", "--permit", "store,replace")
        result = server.pacs(
            "send",
            str(folder),
            str(DATA / "mr" / "ge-epi" / "LICENSE"),
            "--port",
            str(server.port),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "sent 2 (0 with warnings), failed 0, skipped 1 (not DICOM)" in result.stdout
    finally:
        server.stop()


def test_invalid_settings_are_refused_at_start(tmp_path: Path) -> None:
    result = pacs(tmp_path, "stats", PACS_AE_TITLE="WAY_TOO_LONG_AE_TITLE")
    assert result.returncode == 2
    assert "not a valid AE title" in result.stderr
    with pytest.raises(ValueError, match="PostgreSQL"):
        PacsSettings(environment="production", host="0.0.0.0")
    with pytest.raises(ValueError, match="S3_ACCESS_KEY"):
        PacsSettings(environment="production", storage_url="s3://b?endpoint=x:1")


def test_serve_refuses_an_unmigrated_postgresql_index(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    result = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve"],
        env={**PacsServer(tmp_path).env, "PACS_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "run `pacs db upgrade`" in result.stderr


def test_token_roles_of_the_cli_are_the_api_roles() -> None:
    from pacs.cli.admin import TokenRole
    from viewer_api.auth import Role

    assert {r.value for r in TokenRole} == {r.value for r in Role}


def test_jobs_from_the_command_line(tmp_path: Path) -> None:
    from pacs.index import Database
    from pacs.jobs import claim_next_job, enqueue, fail

    pacs(tmp_path, "db", "upgrade")
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    with db.write() as conn:
        job_id = enqueue(conn, "inference", "1.2.3", max_attempts=1)
    claim_next_job(db, "w", ["inference"], timedelta(seconds=30))
    fail(db, job_id, "w", "ValueError: no chest CT series")
    db.dispose()
    listed = json.loads(pacs(tmp_path, "jobs", "list", "--status", "failed", "--json").stdout)
    assert [(j["id"], j["last_error"]) for j in listed] == [
        (job_id, "ValueError: no chest CT series")
    ]
    assert '"status": "failed"' in pacs(tmp_path, "jobs", "show", str(job_id)).stdout
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    with db.write() as conn:
        running = enqueue(conn, "inference", "1.2.4")
    claim_next_job(db, "gpu-1:42:0", ["inference"], timedelta(seconds=30), model="m 1 sha256:ab")
    db.dispose()
    shown = json.loads(pacs(tmp_path, "jobs", "show", str(running)).stdout)
    assert (shown["lease_owner"], shown["model"]) == ("gpu-1:42:0", "m 1 sha256:ab")
    assert shown["lease_expires_at"] is not None
    line = pacs(tmp_path, "jobs", "list", "--status", "running").stdout
    assert f"lease gpu-1:42:0 until {shown['lease_expires_at'][:10]}" in line
    assert pacs(tmp_path, "jobs", "retry", str(job_id)).returncode == 0
    assert pacs(tmp_path, "jobs", "retry", str(job_id)).returncode == 1  # no longer failed
    assert pacs(tmp_path, "jobs", "show", "999").returncode == 1


def test_versions_lists_and_purges_superseded_versions(tmp_path: Path) -> None:
    from pacs.ingest import Source
    from tests.conftest import make_archive
    from tests.dicom import derived, encode

    archive = make_archive(f"sqlite:///{tmp_path / 'index.db'}", f"file://{tmp_path / 'storage'}")
    archive.version_retention = timedelta(0)  # expired as soon as superseded
    ds = derived()
    first = archive.store(encode(ds), Source("DIMSE", calling_ae="CT_1", remote_host="10.0.0.2"))
    ds.SeriesDescription = "corrected"
    second = archive.store(encode(ds), Source("STOW", may_replace=True, subject="dr-admin"))
    archive.db.dispose()

    listed = json.loads(pacs(tmp_path, "versions", ds.SOPInstanceUID, "--json").stdout)
    assert [(v["sha256"], v["current"]) for v in listed] == [
        (second.sha256, True),
        (first.sha256, False),
    ]
    assert listed[1]["stored_by"] == "DIMSE CT_1@10.0.0.2"
    assert listed[1]["superseded_by"] == "STOW dr-admin@-"
    assert pacs(tmp_path, "versions").returncode == 2  # a UID or --purge-expired
    assert pacs(tmp_path, "versions", "1.2.3").returncode == 1  # nothing stored
    result = pacs(tmp_path, "versions", "--purge-expired")
    assert (result.returncode, result.stdout.strip()) == (0, "1 version(s) purged")
    assert not (tmp_path / "storage" / first.blob_key).exists()
    assert (tmp_path / "storage" / second.blob_key).exists()
    assert len(json.loads(pacs(tmp_path, "versions", ds.SOPInstanceUID, "--json").stdout)) == 1
