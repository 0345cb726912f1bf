"""Where a frame request's CPU goes: the API of `pacs serve` in this process under cProfile.

A throw-away `pacs serve` stores LIDC-IDRI-0001 over DIMSE and stops; this process then builds
the same HTTP app on that home (``pacs.cli.serve``'s uvicorn settings), profiles every thread
it starts (the event loop's and the worker threads'), and has wrk fetch frames (one frame per
request, ``--connections`` connections, ``--seconds``) as bench/reads.py does, or another read
kind of bench/load.py, or ``--kind series`` (whole-series WADO-RS as stored). Prints the
functions by own time and by cumulative time, and the request rate. Times are wall-clock per
thread, so waits show (lock ``acquire``, queue ``get``, ``epoll``): read the work's functions,
and compare two profiles' times per request, never with bench/reads.py's figures (cProfile
slows everything down several times).

    nice .venv/bin/python bench/profile_frames.py [--kind frames|series|...] [--seconds 10] \
        [--connections 6] [--top 40] [--dump FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import WRK, read_paths, send, wrk_script
from bench.reads import READ_SERIES
from tests.servers import PacsServer, free_port

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--kind", default="frames", help="a read kind of bench/load.py, or series")
    parser.add_argument("--dump", help="also write the merged profile here (pstats)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacs-profile-frames-"))
    try:
        server = PacsServer(work / "home").start()
        try:
            send([READ_SERIES], server)
            token = server.token("radiologist")
            kinds = {
                kind: ({"Accept": accept}, paths)
                for kind, accept, paths in read_paths(server, token)
            }
            if args.kind == "series":  # whole-series WADO-RS, as stored
                [frame, *_] = kinds["frames"][1]
                paths = [frame.split("/instances/")[0]]
                headers = {"Accept": AS_STORED}
            else:
                headers, paths = kinds[args.kind]
        finally:
            server.stop()
        os.environ.update({k: v for k, v in server.env.items() if k.startswith("PACS_")})
        port = free_port()
        os.environ["PACS_HTTP_PORT"] = str(port)
        script = work / "reads.lua"
        script.write_text(wrk_script(paths, headers, token, seed=1))
        _profile(port, script, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _profile(port: int, script: Path, args: argparse.Namespace) -> None:
    from pacs.cli.common import load_settings
    from pacs.cli.serve_http import start_http

    profiles: list[cProfile.Profile] = []

    def start_in_thread(*_: object) -> None:
        # Called once in each new thread; cProfile then takes the thread's profile hook over.
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()

    threading.setprofile(start_in_thread)
    settings = load_settings()
    server, thread = start_http(settings, None)
    url = f"http://127.0.0.1:{port}"
    subprocess.run([WRK, "-t1", "-c2", "-d2s", "-s", str(script), url], capture_output=True)
    for profile in profiles:  # the warm-up does not count
        profile.clear()
    started = time.process_time()
    out = subprocess.run(
        [WRK, "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = time.process_time() - started
    for profile in profiles:
        profile.disable()
    server.should_exit = True
    thread.join(10)
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    requests = raw["requests"]
    print(
        f"{requests} requests, {requests / raw['duration_us'] * 1e6:.1f}/s under cProfile, "
        f"process CPU {1000 * cpu / requests:.2f} ms per request"
    )
    stats = pstats.Stats()
    for profile in profiles:
        profile.create_stats()
        if profile.stats:  # a thread that ran nothing while collecting has none
            stats.add(profile)
    if args.dump:
        stats.dump_stats(args.dump)
    for order in ("tottime", "cumulative"):
        stats.stream = io.StringIO()
        stats.sort_stats(order).print_stats(args.top)
        print(stats.stream.getvalue())


if __name__ == "__main__":
    main()
