"""``pacs serve`` with several HTTP processes (PACS_HTTP_PROCESSES): one port, every
process answering, connections spread over them, and a killed one replaced."""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path

import psutil

from tests.servers import PacsServer


def _listening_processes(pacs: PacsServer, timeout: float = 60) -> list[psutil.Process]:
    """The parent and its HTTP children, once each says it listens (they start after the
    port opens)."""
    deadline = time.monotonic() + timeout
    while pacs.log.read_text(errors="replace").count("HTTP API listening") < 2:
        assert time.monotonic() < deadline, "the second HTTP process never listened"
        time.sleep(0.1)
    root = psutil.Process(pacs.process.pid)  # type: ignore[union-attr]
    return [root, *root.children()]


def _holder(processes: list[psutil.Process], pacs: PacsServer, peer_port: int) -> int:
    for process in processes:
        for connection in process.net_connections("tcp"):
            if (
                connection.laddr.port == pacs.http_port
                and connection.raddr
                and connection.raddr.port == peer_port
            ):
                return process.pid
    raise AssertionError(f"no process holds the connection from port {peer_port}")


def test_http_processes_share_the_port_and_take_connections_in_turn(tmp_path: Path) -> None:
    pacs = PacsServer(tmp_path / "home", {"PACS_HTTP_PROCESSES": "2"}).start()
    sockets: list[socket.socket] = []
    try:
        processes = _listening_processes(pacs)
        token = pacs.token("radiologist")
        # Six connections in a burst, as a viewer opens them, before any is accepted. With
        # asyncio's own accept, the first process to wake took every one of them.
        for _ in range(6):
            sockets.append(socket.create_connection(("127.0.0.1", pacs.http_port)))
        request = (
            f"GET /dicom-web/studies HTTP/1.1\r\nHost: pacs\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
        for sock in sockets:  # each answered (and so accepted) by one of the processes
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "no answer"
        holders = Counter(_holder(processes, pacs, s.getsockname()[1]) for s in sockets)
        assert len(holders) == 2, holders
    finally:
        for sock in sockets:
            sock.close()
        pacs.stop()
    assert pacs.process is not None and pacs.process.returncode == 0


def test_a_killed_http_process_is_replaced(tmp_path: Path) -> None:
    pacs = PacsServer(tmp_path / "home", {"PACS_HTTP_PROCESSES": "2"}).start()
    try:
        processes = _listening_processes(pacs)
        children = [p for p in processes[1:] if "spawn_main" in " ".join(p.cmdline())]
        assert len(children) == 1
        children[0].kill()
        deadline = time.monotonic() + 60
        while pacs.log.read_text(errors="replace").count("HTTP API listening") < 3:
            assert time.monotonic() < deadline, "no new HTTP process"
            time.sleep(0.1)
        assert "http-1 pid" in pacs.log.read_text()
        with pacs.client("radiologist") as client:
            for _ in range(10):  # whichever process answers
                assert client.get("/dicom-web/studies").status_code == 200
    finally:
        pacs.stop()


def test_a_taken_port_stops_serve_with_a_clear_error(tmp_path: Path) -> None:
    # With several processes the ports are bound by pacs serve itself, before anything starts:
    # a port another program holds is an error that names it, not a hang or a traceback.
    for setting, attribute in (("PACS_RECEIVERS", "port"), ("PACS_HTTP_PROCESSES", "http_port")):
        pacs = PacsServer(tmp_path / setting, {setting: "2"})
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", getattr(pacs, attribute)))
            squatter.listen()
            pacs.log.parent.mkdir(parents=True)
            result = pacs.pacs("serve", check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        port = getattr(pacs, attribute)
        assert f"cannot listen on 127.0.0.1 port {port}" in result.stderr.replace("\n", " ")
