"""The DIMSE receive path alone: C-STORE with a handler that does nothing, pynetdicom's own
server against ours (``pacs.dimse.server``: fewer reads per PDU, reactors woken by events),
on one and four associations, dcmtk's storescu as the sender; and our own sender (`pacs
send`, one association, start-up included) against storescu into our server.

It measures what pynetdicom costs before the archive does any work: the ceiling of
bench/ingest.py. The senders' rate is also taken between the first and the last C-STORE the
server sees, without their start-up (interpreter, imports, association). Each variant runs
as its own process (its CPU time is read from /proc), on the same 300-instance 512x512 CT
study, alternating variants, median of the repetitions.

Usage: python bench/receive_path.py [--repetitions N] [--parts servers,senders]
       [--baseline OTHER_CHECKOUT]
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "receive_path.json"
STORESCU = "/usr/bin/storescu"
PORT = 11499
INSTANCES = 300

# The server of each variant, run with `python -c`: a C-STORE handler that only takes the
# data set's bytes, every storage SOP class in both uncompressed little endian syntaxes,
# 1 MiB PDUs, TCP_NODELAY on accepted sockets.
SERVER = """
import signal, socket, sys, time
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
stored = []  # when each C-STORE reached the handler: printed on SIGTERM
def store(event):
    stored.append(time.perf_counter())
    return event.request.DataSet.getvalue() and 0
def report(*_):
    print(len(stored), stored[-1] - stored[0] if stored else 0.0, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, report)
handlers = [(evt.EVT_C_STORE, store)]
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
    parser.add_argument(
        "--parts",
        default="servers,senders",
        help="servers (pynetdicom's against ours, storescu sending), senders (pacs send "
        "against storescu into ours), or both",
    )
    parser.add_argument(
        "--baseline",
        help="another checkout whose `pacs send` runs beside this one's (e.g. main)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    work = Path(tempfile.mkdtemp(prefix="pacs-receive-"))
    try:
        study = work / "ct300"
        write_study(study, INSTANCES, "RECEIVE", seed=0)
        files = sorted(study.iterdir())
        summary: dict[str, dict[str, float]] = {}
        runs: list[dict[str, object]] = []
        if "servers" in parts:
            summary |= _servers(files, args.repetitions, runs)
        if "senders" in parts:
            baseline = Path(args.baseline) if args.baseline else None
            summary |= _senders(files, args.repetitions, baseline, runs)
        save(RESULTS, "receive_path", args, summary, runs=runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _servers(
    files: list[Path], repetitions: int, runs: list[dict[str, object]]
) -> dict[str, dict[str, float]]:
    """pynetdicom's server against ours, storescu sending on 1 and 4 associations."""
    for repetition in range(repetitions):
        for associations in (1, 4):
            for variant in VARIANTS:
                seconds, cpu, _ = _measure(
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
    return {
        f"{variant}_{associations}assoc": _medians(
            [r for r in runs if r["variant"] == variant and r["associations"] == associations],
            ("instances_per_s", "cpu_ms_per_instance"),
        )
        for associations in (1, 4)
        for variant in VARIANTS
    }


def _medians(runs: list[dict[str, object]], fields: tuple[str, ...]) -> dict[str, float]:
    """The median of each of *fields* over *runs*."""
    return {
        field: statistics.median(float(r[field]) for r in runs)  # type: ignore[arg-type]
        for field in fields
    }


def _senders(
    files: list[Path], repetitions: int, baseline: Path | None, runs: list[dict[str, object]]
) -> dict[str, dict[str, float]]:
    """storescu and `pacs send` (this checkout's, the baseline's) into our server, one
    association, alternating: instances/s from the sender's start to its exit, and between the
    first and the last C-STORE the server's handler sees (start-up, file scan, association
    set-up and release left out)."""
    senders = {"storescu": None, "pacs send": ROOT}
    if baseline is not None:
        senders["pacs send (baseline)"] = baseline.resolve()
    fields = ("instances_per_s", "first_to_last_per_s")
    for repetition in range(repetitions):
        reference: dict[str, float] = {}
        for sender, checkout in senders.items():
            seconds, _, window = _measure("ours", [files], sender=checkout)
            rates = {
                "instances_per_s": round(INSTANCES / seconds, 1),
                "first_to_last_per_s": round((INSTANCES - 1) / window, 1),
            }
            reference = reference or rates  # storescu's, measured first in each repetition
            run: dict[str, object] = {
                "repetition": repetition,
                "sender": sender,
                "associations": 1,
                **rates,
                # The machine is shared: the ratio to storescu in the same repetition is what
                # compares.
                **{f"{f}_vs_storescu": round(rates[f] / reference[f], 2) for f in fields},
            }
            runs.append(run)
            print(run, flush=True)
    return {
        f"ours_1assoc_from_{key}": _medians(
            [r for r in runs if r.get("sender") == sender],
            (*fields, *(f"{f}_vs_storescu" for f in fields)),
        )
        for key, sender in (
            ("storescu", "storescu"),
            ("pacs_send", "pacs send"),
            ("pacs_send_baseline", "pacs send (baseline)"),
        )
        if sender in senders
    }


def _measure(
    variant: str, groups: list[list[Path]], sender: Path | None = None
) -> tuple[float, float, float]:
    """Seconds to send every group (one association each, in parallel) with storescu, or with
    the `pacs send` of the checkout *sender*; the server's CPU seconds meanwhile; seconds from
    the first C-STORE its handler saw to the last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, variant, str(PORT)], env=env, stdout=subprocess.PIPE
    )
    window = 0.0
    try:
        wait_port(PORT)
        cpu_before = cpu_seconds(server.pid)
        start = time.perf_counter()
        command = (
            [STORESCU, "-aec", "PACS", "127.0.0.1", str(PORT)]
            if sender is None
            else [sys.executable, "-m", "pacs.cli", "send", "--port", str(PORT)]
        )
        senders = [
            subprocess.Popen(
                [*command, *map(str, group)],
                env={**env, "TCP_NODELAY": "1", "PYTHONPATH": str(sender or ROOT)},
                cwd=sender,
                stdout=subprocess.DEVNULL,
            )
            for group in groups
        ]
        if any(process.wait(timeout=600) != 0 for process in senders):
            raise RuntimeError(f"{command[0]} to {variant} failed")
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        server.terminate()
        out, _ = server.communicate()
        if out.split():
            window = float(out.split()[-1])
    return seconds, cpu, window


if __name__ == "__main__":
    main()
