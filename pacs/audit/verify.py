"""Proving the audit chain intact, or naming its first broken link."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from pacs.audit.store import GENESIS, HASHED, chain_hash, chain_rows


@dataclass(frozen=True)
class BrokenLink:
    """Where the chain breaks: the first row that does not follow from the ones before."""

    day: str
    seq: int
    id: int
    problem: str

    def __str__(self) -> str:
        return f"day {self.day} seq {self.seq} (id {self.id}): {self.problem}"


@dataclass(frozen=True)
class ChainReport:
    """The events checked, the last hash (an operator may record it: a chain cut at its end
    shows only against a head recorded elsewhere), and the first broken link if any."""

    events: int
    head: str
    broken: BrokenLink | None

    @property
    def intact(self) -> bool:
        return self.broken is None


def verify_chain(conn: Connection) -> ChainReport:
    """Walk the chain in (day, seq) order and check every link.

    A row is broken when its own hash does not match its content (changed), when it does not
    follow the previous row's seq (rows deleted or moved) or when its prev_hash is not the
    previous row's hash (a row before it deleted, replaced or reordered).
    """
    previous_hash, previous_day, previous_seq, count = GENESIS, None, 0, 0
    for row in chain_rows(conn):
        expected_seq = previous_seq + 1 if row.day == previous_day else 1
        problem = None
        if row.seq != expected_seq:
            problem = f"seq {row.seq} where {expected_seq} was expected: events missing or moved"
        elif row.prev_hash != previous_hash:
            problem = "prev_hash is not the previous event's hash: an event before it is gone"
        elif chain_hash({column: getattr(row, column) for column in HASHED}) != row.hash:
            problem = "hash does not match the event's content: the event was altered"
        if problem is not None:
            return ChainReport(count, previous_hash, BrokenLink(row.day, row.seq, row.id, problem))
        previous_hash, previous_day, previous_seq = row.hash, row.day, row.seq
        count += 1
    return ChainReport(count, previous_hash, None)
