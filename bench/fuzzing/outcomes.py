"""Counting what the archive did with fuzzed inputs, and which outcomes are bugs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.fuzzing.mutate import Mutant
from pacs.dimse import status
from pacs.errors import (
    ArchiveError,
    ForeignStudy,
    InstanceConflict,
    InvalidInstance,
    InvalidUID,
    ReplaceRefused,
    SOPClassMismatch,
    StudyMismatch,
)
from pacs.ingest import Archive, Source
from pacs.metadata import instance_json

# C-STORE refusals a broken data set may get (pacs/dimse/status.py, PS3.4 B.2.3).
DIMSE_REFUSALS = frozenset(
    {
        status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,  # 0xA900
        status.CANNOT_UNDERSTAND,  # 0xC000
        status.CANNOT_UNDERSTAND_INVALID_UID,  # 0xC001
        status.CANNOT_UNDERSTAND_CONFLICT,  # 0xC002
        status.NOT_AUTHORIZED,  # 0x0124: would change a stored patient's identity
    }
)
# STOW-RS FailureReasons of a refused part (viewer_api/stow.py).
STOW_REFUSALS = frozenset({0xA900, 0xC000, 0x0124})
# Seconds beyond which an answer is reported as slow (with its latency), though not a bug.
SLOW_ANSWER = 5.0
# Errors the ingest path raises on purpose for bad input (anything else is a bug).
INPUT_ERRORS: tuple[type[ArchiveError], ...] = (InvalidInstance,)


@dataclass
class Tally:
    """Counts for one interface."""

    inputs: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    server_errors: int = 0
    crashes: int = 0
    hangs: int = 0
    unreasoned: int = 0  # refusals that came without a reason
    read_back: int = 0  # reads of stored instances answered 200 (STOW-RS)
    by_mutation: Counter[str] = field(default_factory=Counter)
    bugs: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds to each answer (servers)
    slow: list[dict[str, Any]] = field(default_factory=list)  # answers over SLOW_ANSWER

    def answered(self, seconds: float, mutant: Mutant | None) -> None:
        """An answer came after *seconds*; a slow one is listed (not a bug)."""
        self.latencies.append(seconds)
        if seconds > SLOW_ANSWER and len(self.slow) < 50:
            self.slow.append(
                {
                    "seconds": round(seconds, 1),
                    "mutation": mutant.kind if mutant else None,
                    "seed": str(mutant.seed) if mutant else None,
                }
            )

    def bug(self, kind: str, mutant: Mutant | None, detail: str) -> None:
        if len(self.bugs) < 50:
            self.bugs.append(
                {
                    "kind": kind,
                    "mutation": mutant.kind if mutant else None,
                    "seed": str(mutant.seed) if mutant else None,
                    "detail": detail[:500],
                }
            )

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.crashes or self.hangs or self.unreasoned)

    def as_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "accepted": self.accepted,
            "refused": sum(self.refused.values()),
            "refused_by_status": dict(sorted(self.refused.items())),
            "http_5xx": self.server_errors,
            "crashes": self.crashes,
            "hangs": self.hangs,
            "refusals_without_reason": self.unreasoned,
            "reads_of_stored_instances": self.read_back,
            "inputs_by_mutation": dict(sorted(self.by_mutation.items())),
            "bugs": self.bugs,
        } | (self._latency_json() if self.latencies else {})

    def _latency_json(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

        return {
            "answer_seconds": {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 2)},
            f"slow_answers_over_{SLOW_ANSWER:g}_s": sum(s > SLOW_ANSWER for s in ordered),
            "slow_answers": self.slow,
        }


def refusal_name(exc: ArchiveError) -> str:
    """The C-STORE status the DIMSE handler answers *exc* with, as the report names it."""
    if isinstance(exc, SOPClassMismatch):
        code = status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    elif isinstance(exc, (ReplaceRefused, ForeignStudy)):
        code = status.NOT_AUTHORIZED if isinstance(exc, ReplaceRefused) else 0xC002
    elif isinstance(exc, InstanceConflict):
        code = status.CANNOT_UNDERSTAND_CONFLICT
    elif isinstance(exc, InvalidUID):
        code = status.CANNOT_UNDERSTAND_INVALID_UID
    elif isinstance(exc, StudyMismatch):
        code = status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    else:
        code = status.CANNOT_UNDERSTAND
    return f"0x{code:04X}"


def store_in_process(archive: Archive, mutant: Mutant, tally: Tally, as_dimse: bool) -> None:
    """Archive.store() one mutant as a C-STORE data set (*as_dimse*) or a STOW-RS part."""
    tally.inputs += 1
    tally.by_mutation[mutant.kind] += 1
    try:
        if as_dimse:
            result = archive.store(
                mutant.dataset,
                Source("DIMSE", calling_ae="FUZZ"),
                transfer_syntax_uid=mutant.TransferSyntaxUID,
                announced=(mutant.SOPClassUID, mutant.SOPInstanceUID),
            )
        else:
            result = archive.store(mutant.part10, Source("STOW", subject="fuzz"))
    except INPUT_ERRORS as exc:
        tally.refused[refusal_name(exc)] += 1
        if not str(exc):
            tally.unreasoned += 1
            tally.bug("refusal without a reason", mutant, repr(exc))
    except Exception as exc:  # the bug this fuzzer looks for
        tally.crashes += 1
        tally.bug("unexpected exception", mutant, f"{type(exc).__name__}: {exc}")
    else:
        tally.accepted += 1
        try:  # what is stored is served: its DICOM JSON (WADO-RS metadata) can be built
            instance_json(archive.blobs.get(result.blob_key), _no_bulk_data)
        except Exception as exc:
            tally.crashes += 1
            tally.bug("stored, but its DICOM JSON fails", mutant, f"{type(exc).__name__}: {exc}")


def _no_bulk_data(study: str, series: str, instance: str, tag: int) -> str:
    return f"bulk/{tag:08X}"
