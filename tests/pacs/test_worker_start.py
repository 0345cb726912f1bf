"""A `pacs worker` started while its database is away waits for it instead of exiting.

Found by the fault harness (tests/faults): a supervisor restarted a killed worker while
PostgreSQL was itself restarting; the worker exited at once ("cannot read the schema
revision") and the queue stood still.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.servers import PacsServer, PostgresServer, stop, wait_for


def test_a_worker_waits_for_its_database(tmp_path: Path) -> None:
    postgres = PostgresServer()
    try:
        home = tmp_path / "home"
        server = PacsServer(home, {"PACS_DATABASE_URL": postgres.new_database()})
        server.pacs("db", "upgrade")
        postgres.stop()
        log = tmp_path / "worker.log"
        with log.open("ab") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "pacs.cli", "worker", "--concurrency", "1"],
                env=server.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(
                lambda: "waiting" in log.read_text() or worker.poll() is not None,
                timeout=120,
                what="the worker to wait or exit",
            )
            time.sleep(1.5)
            assert worker.poll() is None, log.read_text()  # still there, not exited
            postgres.start()
            wait_for(
                lambda: "inference: " in log.read_text(),
                timeout=120,
                what="the worker to start once the database answers",
            )
            assert worker.poll() is None, log.read_text()
        finally:
            stop(worker)
    finally:
        postgres.close()
