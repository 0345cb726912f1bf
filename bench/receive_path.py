"""The DIMSE receive path alone: C-STORE with a handler that does nothing, pynetdicom's own
server against ours (``pacs.dimse.server``: fewer reads per PDU, reactors woken by events),
on one and four associations, dcmtk's storescu as the sender; and our own sender (`pacs
send`, one association, start-up included) against storescu into our server.

It measures what pynetdicom costs before the archive does any work: the ceiling of
bench/ingest.py. Each variant runs as its own process (its CPU time is read from /proc), on
the same 300-instance 512x512 CT study, alternating variants, median of the repetitions.

Usage: python bench/receive_path.py [--repetitions N]
Writes bench/results/receive_path.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.generate import write_study
from bench.machine import cpu_seconds, save, wait_port

RESULTS = Path(__file__).resolve().parent / "results" / "receive_path.json"
STORESCU = "/usr/bin/storescu"
PORT = 11499
INSTANCES = 300

# The server of each variant, run with `python -c`: a C-STORE handler that only takes the
# data set's bytes, every storage SOP class in both uncompressed little endian syntaxes,
# 1 MiB PDUs, TCP_NODELAY on accepted sockets.
SERVER = """
import socket, sys
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer
variant, port = sys.argv[1], int(sys.argv[2])
if variant == "ours":
    from pacs.dimse.server import _Server as Base
else:
    class Base(ThreadedAssociationServer):
        def get_request(self):
            sock, address = self.socket.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock, address
ae = AE(ae_title="PACS")
ae.maximum_pdu_size = 1 << 20
ae.network_timeout = 60
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
handlers = [(evt.EVT_C_STORE, lambda event: event.request.DataSet.getvalue() and 0)]
if variant == "pynetdicom-0.1ms":  # the poll interval our server used while alone
    def fast(event):
        event.assoc.dul._run_loop_delay = 0.0001
    handlers.append((evt.EVT_CONN_OPEN, fast))
ae.make_server(("127.0.0.1", port), evt_handlers=handlers, server_class=Base).serve_forever()
"""
VARIANTS = ("pynetdicom", "pynetdicom-0.1ms", "ours")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacs-receive-"))
    try:
        study = work / "ct300"
        write_study(study, INSTANCES, "RECEIVE", seed=0)
        files = sorted(study.iterdir())
        runs: list[dict[str, object]] = []
        for repetition in range(args.repetitions):
            for associations in (1, 4):
                for variant in VARIANTS:
                    seconds, cpu = _measure(
                        variant, [files[k::associations] for k in range(associations)]
                    )
                    run = {
                        "repetition": repetition,
                        "variant": variant,
                        "associations": associations,
                        "instances_per_s": round(INSTANCES / seconds, 1),
                        "cpu_ms_per_instance": round(1000 * cpu / INSTANCES, 2),
                    }
                    runs.append(run)
                    print(run, flush=True)
        for repetition in range(args.repetitions):
            seconds, cpu = _measure("ours", [files], sender="pacs-send")
            run = {
                "repetition": repetition,
                "variant": "ours",
                "sender": "pacs send",
                "associations": 1,
                "instances_per_s": round(INSTANCES / seconds, 1),
                "cpu_ms_per_instance": round(1000 * cpu / INSTANCES, 2),
            }
            runs.append(run)
            print(run, flush=True)
        summary = {
            f"{variant}_{associations}assoc": {
                key: statistics.median(
                    float(r[key])  # type: ignore[arg-type]
                    for r in runs
                    if r["variant"] == variant
                    and r["associations"] == associations
                    and "sender" not in r
                )
                for key in ("instances_per_s", "cpu_ms_per_instance")
            }
            for associations in (1, 4)
            for variant in VARIANTS
        }
        summary["ours_1assoc_from_pacs_send"] = {
            "instances_per_s": statistics.median(
                float(r["instances_per_s"])  # type: ignore[arg-type]
                for r in runs
                if r.get("sender") == "pacs send"
            )
        }
        save(RESULTS, "receive_path", args, summary, runs=runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(
    variant: str, groups: list[list[Path]], sender: str = "storescu"
) -> tuple[float, float]:
    """Seconds to send every group (one association each, in parallel) and the server's CPU
    seconds meanwhile."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    server = subprocess.Popen([sys.executable, "-c", SERVER, variant, str(PORT)], env=env)
    try:
        wait_port(PORT)
        cpu_before = cpu_seconds(server.pid)
        start = time.perf_counter()
        command = (
            [STORESCU, "-aec", "PACS", "127.0.0.1", str(PORT)]
            if sender == "storescu"
            else [sys.executable, "-m", "pacs.cli", "send", "--port", str(PORT)]
        )
        senders = [
            subprocess.Popen(
                [*command, *map(str, group)],
                env={**env, "TCP_NODELAY": "1"},
                stdout=subprocess.DEVNULL,
            )
            for group in groups
        ]
        if any(sender.wait(timeout=600) != 0 for sender in senders):
            raise RuntimeError(f"storescu to {variant} failed")
        seconds = time.perf_counter() - start
        return seconds, cpu_seconds(server.pid) - cpu_before
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
