"""Real servers for tests, on loopback only: PostgreSQL, an S3 endpoint, the archive itself."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def dcmtk(tool: str) -> str:
    """Path of a dcmtk tool (pynetdicom installs scripts of the same names into the venv)."""
    found = shutil.which(tool, path="/usr/bin:/usr/local/bin")
    if found is None:
        raise RuntimeError(f"dcmtk's {tool} not found (apt-get install dcmtk)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """End a process this test suite started, by its PID."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PostgresServer:
    """A throw-away PostgreSQL cluster from Debian's binaries (run as `postgres` when root)."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        initdb = str(found[-1]) if found else shutil.which("initdb")
        if initdb is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        bindir = Path(initdb).parent
        self.root = Path(tempfile.mkdtemp(prefix="pacs-pg-"))
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        data = self.root / "data"
        self._run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        self.pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
        self.start()

    def start(self) -> None:
        """Start the cluster (again) on its port."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root}"
        self._run(*self.pg_ctl, "-w", "-l", str(self.root / "log"), "-o", options, "start")

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: open sessions are ended), keeping its data."""
        self._run(*self.pg_ctl, "-w", "-m", "fast", "stop")

    def restart(self, mode: str = "immediate") -> None:
        """Stop the cluster (``immediate``: as a crash would, no checkpoint) and start it again
        on the same port and data."""
        self._run(*self.pg_ctl, "-m", mode, "-w", "stop")
        self.start()

    def _run(self, *command: str) -> None:
        subprocess.run([*self.prefix, *command], check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, migrated: bool = False) -> str:
        """The URL of a new, empty database (*migrated*: at the newest schema revision)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = self.url(name)
        if migrated:
            from pacs.index import Database, upgrade

            db = Database(url)
            upgrade(db)
            db.dispose()
        return url

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run(*self.pg_ctl, "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class S3Server:
    """An S3-compatible endpoint on loopback (moto's server; MinIO cannot be installed here)."""

    access_key = "test-access-key"
    secret_key = "test-secret-key"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, bucket: str | None = None) -> str:
        bucket = bucket or f"pacs-{uuid.uuid4().hex[:12]}"
        return f"s3://{bucket}?endpoint={self.endpoint}&secure=false"


class PacsServer:
    """``pacs serve`` as a separate process, as an administrator would run it."""

    def __init__(
        self, home: Path, env: dict[str, str] | None = None, umask: int | None = None
    ) -> None:
        self.home = home
        self.umask = -1 if umask is None else umask  # -1: Popen leaves the umask alone
        self.port = free_port()
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "PACS_HOME": str(home),
            "PACS_DICOM_PORT": str(self.port),
            "PACS_HTTP_PORT": str(self.http_port),
            "PACS_AE_TITLE": "PACS",
            # No in-process inference worker unless a test asks for one (it loads the model).
            "PACS_WORKERS": "0",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / "serve.log"

    def start(self, timeout: float = 60) -> PacsServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)  # the home, unless log is moved
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pacs.cli", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                umask=self.umask,
            )
        wait_for_port(self.port, timeout=timeout, process=self.process)
        wait_for_port(self.http_port, timeout=timeout, process=self.process)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def token(
        self, *roles: str, facilities: tuple[str, ...] = (), subject: str = "pacs-cli"
    ) -> str:
        """A bearer token for *roles* and *facilities* (``("*",)``: every facility; none: the
        default facility), signed with this server's embedded secret. Minted in-process with the
        function `pacs token create` calls (that command has its own tests): a CLI process per
        token cost ~2.5 s of the suite's time each."""
        from viewer_api.auth import Role, create_token, load_or_create_secret

        shared = self.env.get("PACS_JWT_SECRET_FILE")
        secret = load_or_create_secret(
            Path(self.env["PACS_HOME"]), Path(shared) if shared else None
        )
        return create_token(secret, subject, [Role(role) for role in roles], 3600, list(facilities))

    def client(self, *roles: str, facilities: tuple[str, ...] = ()) -> httpx.Client:
        """An HTTP client of the API with a bearer token for *roles* and *facilities*."""
        token = self.token(*roles, facilities=facilities)
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop(self.process, sig)

    def pacs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``pacs`` CLI command against this server's home and settings."""
        return subprocess.run(
            [sys.executable, "-m", "pacs.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )


@contextlib.contextmanager
def running(server: PacsServer) -> Iterator[PacsServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


class NetworkNamespace:
    """A network namespace with only loopback, for peers that cannot bind to 127.0.0.1 alone
    (Orthanc 1.10, dcmtk's storescp). Everything talking to them runs inside it too."""

    def __init__(self) -> None:
        self.name = f"pacs-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.run("ip", "link", "set", "lo", "up")

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            self.command(*args), check=True, capture_output=True, text=True, timeout=120, **kwargs
        )

    def wait_for_port(self, port: int, process: subprocess.Popen[bytes]) -> None:
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode}")
            if (
                subprocess.run(
                    self.command(sys.executable, "-c", probe), capture_output=True
                ).returncode
                == 0
            ):
                return
            time.sleep(0.2)
        raise TimeoutError(f"nothing listens on port {port} in {self.name}")

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def storescu(server: PacsServer, path: Path) -> None:
    subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            "CT_SCANNER",
            "-aec",
            "PACS",
            "+sd",
            "+r",
            "127.0.0.1",
            str(server.port),
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
