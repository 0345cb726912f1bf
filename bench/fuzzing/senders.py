"""Sending mutants to a running archive: C-STORE (pynetdicom) and STOW-RS (httpx), each bounded
by a timeout, with the outcome checked against what a refusal must look like.

What counts as hung: no answer within the archive's own network timeout
(``PACS_NETWORK_TIMEOUT``, after which the archive itself gives up on a silent peer) plus
``HANG_MARGIN``. A shorter client timeout measured the machine's load, not the archive: on a
two-core machine at load average 18 a C-STORE that answers in 0.1 s alone can take tens of
seconds. Answers slower than ``SLOW_ANSWER`` are counted apart with their latency; an
association the archive aborts (or drops) before the timeout is a bug of its own."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pynetdicom import AE, _config

from bench.fuzzing.mutate import Mutant
from bench.fuzzing.outcomes import DIMSE_REFUSALS, STOW_REFUSALS, Tally
from pacs.dimse.scu import guard_responses
from pacs.part10 import with_meta
from pacs.settings import PacsSettings

# The archive's PACS_NETWORK_TIMEOUT by default, and what a request may take beyond it before
# it counts as hung (seconds).
NETWORK_TIMEOUT = float(PacsSettings.model_fields["network_timeout"].default)
HANG_MARGIN = 30.0
TIMEOUT = NETWORK_TIMEOUT + HANG_MARGIN
_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"
_RETRIEVE_URL = "00081190"


class CStoreSender:
    """One association at a time to the archive, re-opened when the archive drops it."""

    def __init__(
        self,
        port: int,
        contexts: list[tuple[str, str]],
        ae_title: str = "FUZZ_SCU",
        timeout: float = TIMEOUT,
    ):
        _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes as they are, broken or not
        self.port = port
        self.timeout = timeout
        self.ae = AE(ae_title=ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        self.ae.maximum_pdu_size = 0  # no limit: large mutants in few PDUs
        for context in sorted(set(contexts))[:127]:
            self.ae.add_requested_context(*context)
        self.ae.add_requested_context("1.2.840.10008.1.1")
        self.assoc: Any = None
        self.spool = Path(tempfile.mkdtemp(prefix="fuzz-cstore-"))

    def _association(self) -> Any:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate("127.0.0.1", self.port, ae_title="PACS")
            guard_responses(self.assoc)
        return self.assoc

    def send(self, mutant: Mutant, tally: Tally) -> None:
        """C-STORE *mutant* and count its outcome."""
        tally.inputs += 1
        tally.by_mutation[mutant.kind] += 1
        path = self.spool / f"{uuid.uuid4().hex}.dcm"
        path.write_bytes(
            with_meta(
                mutant.dataset, mutant.SOPClassUID, mutant.SOPInstanceUID, mutant.TransferSyntaxUID
            )
        )
        try:
            assoc = self._association()
            if not assoc.is_established:
                tally.crashes += 1
                tally.bug("association refused", mutant, "A-ASSOCIATE failed")
                return
            start = time.monotonic()
            reply = assoc.send_c_store(path)
            seconds = time.monotonic() - start
        except Exception as exc:  # the SCU could not even send it: the mutant is not the bug
            tally.bug("not sendable", mutant, f"{type(exc).__name__}: {exc}")
            tally.inputs -= 1
            return
        finally:
            path.unlink(missing_ok=True)
        if "Status" not in reply:
            self._forget()
            if seconds < self.timeout - 1:  # the archive aborted or dropped the association
                tally.crashes += 1
                tally.bug(
                    "C-STORE aborted",
                    mutant,
                    f"no response, association lost after {seconds:.1f} s",
                )
            else:
                tally.hangs += 1
                tally.bug("no C-STORE response", mutant, f"none within {self.timeout:.0f} s")
            return
        tally.answered(seconds, mutant)
        code = int(reply.Status)
        if code == 0:
            tally.accepted += 1
        elif code in DIMSE_REFUSALS:
            tally.refused[f"0x{code:04X}"] += 1
            if not str(reply.get("ErrorComment", "")):
                tally.unreasoned += 1
                tally.bug("refusal without ErrorComment", mutant, f"0x{code:04X}")
        else:
            tally.server_errors += 1
            comment = reply.get("ErrorComment", "")
            tally.bug("unexpected C-STORE status", mutant, f"0x{code:04X} {comment}")

    def _forget(self) -> None:
        """Drop a lost association and close its socket (pynetdicom skips the close when the
        peer has gone: its shutdown() fails first)."""
        raw = getattr(getattr(self.assoc.dul, "socket", None), "socket", None)
        if raw is not None:
            raw.close()
        self.assoc = None

    def echo(self) -> bool:
        """C-ECHO on a new association: the archive still serves."""
        assoc = self.ae.associate("127.0.0.1", self.port, ae_title="PACS")
        try:
            return bool(assoc.is_established and int(assoc.send_c_echo().get("Status", -1)) == 0)
        finally:
            if assoc.is_established:
                assoc.release()

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        for leftover in self.spool.iterdir():
            leftover.unlink()
        self.spool.rmdir()


def multipart(parts: list[bytes], boundary: str = "fuzz-boundary") -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts and its Content-Type."""
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
        for part in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(
    client: httpx.Client, mutant: Mutant, tally: Tally, reader: httpx.Client | None = None
) -> None:
    """STOW-RS *mutant* as one part and count its outcome; read it back with *reader*."""
    tally.inputs += 1
    tally.by_mutation[mutant.kind] += 1
    body, content_type = multipart([mutant.part10])
    response = count_response(
        client, body, content_type, tally, mutant, "/dicom-web/studies", allow_partial=False
    )
    if reader is not None and response is not None and response.status_code == 200:
        read_back(reader, response, tally, mutant)


def read_back(client: httpx.Client, stored: httpx.Response, tally: Tally, mutant: Mutant) -> None:
    """An instance stored is served: its study's DICOM JSON metadata and a QIDO-RS search of
    its instances answer without a server error (a stored oddity must not break reads)."""
    study_url = stored.json().get(_RETRIEVE_URL, {}).get("Value", [""])[0]
    path = "/dicom-web/studies/" + study_url.rpartition("/studies/")[2]
    for url in (f"{path}/metadata", f"{path}/instances?includefield=all"):
        try:
            response = client.get(url, timeout=TIMEOUT)
        except httpx.TimeoutException:
            tally.hangs += 1
            tally.bug("read back timed out", mutant, url)
            continue
        if response.status_code == 200:
            tally.read_back += 1
        else:  # a stored instance's study is there to read: anything else is a bug
            tally.server_errors += response.status_code >= 500
            tally.unreasoned += response.status_code < 500
            tally.bug(f"read back: HTTP {response.status_code}", mutant, f"{url} {response.text}")


def count_response(
    client: httpx.Client,
    body: bytes,
    content_type: str,
    tally: Tally,
    mutant: Mutant | None,
    path: str,
    allow_partial: bool,
) -> httpx.Response | None:
    """POST *body* and check the answer: 200 (stored), or a refusal that says why."""
    start = time.monotonic()
    try:
        response = client.post(
            path, content=body, headers={"Content-Type": content_type}, timeout=TIMEOUT
        )
    except httpx.TimeoutException:
        tally.hangs += 1
        tally.bug("STOW-RS timed out", mutant, f"{path}: no answer within {TIMEOUT:.0f} s")
        return None
    except httpx.TransportError as exc:
        tally.crashes += 1
        tally.bug("STOW-RS connection failed", mutant, f"{type(exc).__name__}: {exc}")
        return None
    tally.answered(time.monotonic() - start, mutant)
    code = response.status_code
    if code >= 500:
        tally.server_errors += 1
        tally.bug(f"HTTP {code}", mutant, response.text)
    elif code == 200 or (code == 202 and allow_partial):
        tally.accepted += 1
    elif code in (202, 409):
        reasons = [
            item.get(_FAILURE_REASON, {}).get("Value", [None])[0]
            for item in response.json().get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
        ]
        for reason in reasons:
            tally.refused[f"0x{reason:04X}" if isinstance(reason, int) else "no reason"] += 1
        if not reasons or not set(reasons) <= STOW_REFUSALS or not response.headers.get("Warning"):
            tally.unreasoned += 1
            tally.bug("STOW-RS refusal without a reason", mutant, f"{code} {response.text}")
    elif 400 <= code < 500:
        tally.refused[f"HTTP {code}"] += 1
        if not _problem_detail(response):
            tally.unreasoned += 1
            tally.bug(f"HTTP {code} without a reason", mutant, response.text)
    else:
        tally.server_errors += 1
        tally.bug(f"HTTP {code}", mutant, response.text)
    return response


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("detail", "")) if isinstance(body, dict) else ""
