"""Patient data and secrets on disk are the archive user's alone: 0700 directories, 0600 files,
whatever the umask; a JWT secret others may read, or a short one, stops the archive."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.ingest import Source
from tests.conftest import make_archive
from tests.dicom import CT_SMALL
from tests.servers import PacsServer, running, storescu


def modes(root: Path) -> dict[str, int]:
    """Permission bits of *root* and everything under it, by path relative to *root*'s parent."""
    found = {root.name: stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            found[str(path.relative_to(root.parent))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(found: dict[str, int], root: Path) -> None:
    wrong = {
        path: f"{mode:04o}"
        for path, mode in found.items()
        if mode != (0o700 if (root.parent / path).is_dir() else 0o600)
    }
    assert not wrong, wrong


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Umask 000 in this process: only modes the code sets explicitly keep others out."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_pacs_serve_creates_its_home_private(tmp_path: Path) -> None:
    site = tmp_path / "site"  # does not exist: `pacs serve` makes it and the home in it
    server = PacsServer(site / "home", umask=0)
    server.log = tmp_path / "serve.log"
    with running(server):
        storescu(server, CT_SMALL)
        assert server.token("admin")
        found = modes(site)  # while serving: the SQLite -wal and -shm files exist
    home = "site/home"
    assert {f"{home}/index.db", f"{home}/index.db-wal", f"{home}/jwt-secret"} <= found.keys()
    assert any(p.startswith(f"{home}/storage/") and p.endswith(".dcm") for p in found)
    assert_private(found, site)


def test_an_archive_creates_private_files_whatever_the_umask(
    tmp_path: Path, open_umask: None
) -> None:
    home = tmp_path / "home"
    archive = make_archive(f"sqlite:///{home / 'index.db'}", f"file://{home / 'storage'}")
    try:
        stored = archive.store(CT_SMALL.read_bytes(), Source("IMPORT"))
        found = modes(home)
    finally:
        archive.db.dispose()
    assert f"home/storage/{stored.StudyInstanceUID}" in found
    assert {"home/index.db", "home/index.db-wal"} <= found.keys()
    assert_private(found, home)


def _refused(server: PacsServer, *command: str) -> str:
    """stderr of a `pacs` command that must fail with the CLI's error exit status."""
    result = subprocess.run(
        [sys.executable, "-m", "pacs.cli", *command],
        env={**server.env, "COLUMNS": "1000"},  # no wrap inside a long temporary path
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    return " ".join(result.stderr.split())


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_secret_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    server = PacsServer(tmp_path / "home")
    server.home.mkdir()
    secret = server.home / "jwt-secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(mode)
    error = _refused(server, "token", "create", "--role", "admin")
    assert f"jwt-secret is open to group or others (mode {mode:04o}): run chmod 600" in error


def test_pacs_serve_refuses_unsafe_secrets(tmp_path: Path) -> None:
    server = PacsServer(tmp_path / "home")
    server.home.mkdir()
    secret = server.home / "jwt-secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o644)
    assert "open to group or others (mode 0644)" in _refused(server, "serve")
    secret.chmod(0o600)
    secret.write_bytes(b"0123456789abcdef")  # 16 bytes: brute-forced from one token
    assert "holds 16 bytes, a secret needs at least 32" in _refused(server, "serve")
    assert "holds 16 bytes" in _refused(server, "token", "create", "--role", "admin")


def test_nodes_share_the_secret_of_pacs_jwt_secret_file(tmp_path: Path) -> None:
    """Two homes, one PACS_JWT_SECRET_FILE: a token made on one node verifies on the other,
    and neither home gets a jwt-secret of its own; a missing file is refused, not made."""
    from viewer_api.auth import TokenVerifier, load_or_create_secret

    shared = tmp_path / "site-jwt-secret"
    shared.write_bytes(os.urandom(32))
    shared.chmod(0o600)
    node_a = PacsServer(tmp_path / "a", {"PACS_JWT_SECRET_FILE": str(shared)})
    token = node_a.token("admin")
    node_b_secret = load_or_create_secret(tmp_path / "b", shared)
    assert TokenVerifier(secret=node_b_secret).verify(token).subject
    assert not (tmp_path / "a" / "jwt-secret").exists()
    assert not (tmp_path / "b" / "jwt-secret").exists()
    missing = PacsServer(tmp_path / "c", {"PACS_JWT_SECRET_FILE": str(tmp_path / "nothing")})
    missing.home.mkdir()
    assert "is not a file" in _refused(missing, "token", "create", "--role", "admin")
    assert not (tmp_path / "nothing").exists()
