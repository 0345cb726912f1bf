"""The README's "Try it" commands, run as written against a running archive (issue 10 item 24).

A README example that stops halfway (as ``storescu +sd +r data/`` did at the first JPEG 2000
file) is a bug like any other: every command of the block runs here and must succeed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import PacsServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEFAULT_PORT = "11112"


def try_it_commands() -> list[str]:
    """The shell commands of the README's "Try it" block, continuation lines joined."""
    text = README.read_text()
    block = re.search(r"## Try it\s+```sh\n(.*?)```", text, re.DOTALL)
    assert block is not None, "the README has no Try it block"
    joined = block.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        command = line.split(" # ")[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    pacs = PacsServer(tmp_path_factory.mktemp("readme") / "home").start()
    yield pacs
    pacs.stop()


def _argv(command: str, server: PacsServer) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == ".venv/bin/pacs":  # the test's own interpreter runs the same CLI
        argv = [sys.executable, "-m", "pacs.cli", *argv[1:]]
    return [str(server.port) if arg == DEFAULT_PORT else arg for arg in argv]


@pytest.mark.slow
def test_every_try_it_command_succeeds(server: PacsServer) -> None:
    commands = try_it_commands()
    assert commands[0] == "make run"  # the server itself; the fixture runs `pacs serve`
    assert any(c.startswith("storescu") for c in commands)
    env = {**server.env, "PACS_DICOM_PORT": str(server.port)}
    for command in commands[1:]:
        result = subprocess.run(
            _argv(command, server),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{command}\n{output[-2000:]}"
        assert "Store Failed" not in output and "E: " not in output, f"{command}\n{output[-2000:]}"
    stats = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "stats", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"instances": ' in stats.stdout
