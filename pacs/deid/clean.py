"""Cleaning descriptors (Clean Descriptors Option, PS3.15 E.3.5).

"Clean" keeps a description or label but without what identifies: here, every piece of text
that the profile removes, empties or replaces elsewhere in the same instance (names and their
components, IDs, accession number, institution, station, birth date, ...) is cut out of the
descriptor wherever it occurs, ignoring case. What cannot be checked that way, free text
(LT, ST, UT: comments, histories, narratives), is not cleaned but gets the Basic Profile's action.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydicom.dataset import Dataset

from pacs.deid.actions import Action
from pacs.deid.table import ConfidentialityTable

FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
# Shorter pieces ("CT", "JR", "M") would cut ordinary words out of descriptors.
MIN_PIECE = 3
_IDENTIFYING_VRS = frozenset({"AE", "DA", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_PN_SEPARATORS = re.compile(r"[\^=\s,]+")


class Scrubber:
    """Cuts given identifying pieces of text out of descriptors.

    Parameters
    ----------
    pieces : Iterable[str]
        The texts to remove; those shorter than ``MIN_PIECE`` are ignored.
    """

    def __init__(self, pieces: Iterable[str]) -> None:
        kept = sorted({p.strip() for p in pieces if len(p.strip()) >= MIN_PIECE}, key=len)
        self.pieces = tuple(reversed(kept))  # longest first: a full name before its parts
        self._pattern = (
            re.compile("|".join(re.escape(p) for p in self.pieces), re.IGNORECASE)
            if self.pieces
            else None
        )

    @classmethod
    def of(cls, ds: Dataset, table: ConfidentialityTable) -> Scrubber:
        """The identifying text of *ds*: values of attributes the Basic Profile does not keep."""
        pieces: list[str] = []
        for element in ds.iterall():
            rule = table.rule_for(element.tag)
            if rule is None or element.VR not in _IDENTIFYING_VRS:
                continue
            if rule.clean_descriptors is not None:  # a descriptor itself: cleaned, not a piece
                continue
            if not set(rule.basic.alternatives) & {Action.D, Action.X, Action.Z}:
                continue
            values = element.value if element.VM > 1 else [element.value]
            for value in values:
                if value in (None, ""):
                    continue
                text = str(value)
                pieces.append(text)
                if element.VR == "PN":
                    pieces.extend(_PN_SEPARATORS.split(text))
        return cls(pieces)

    def clean(self, text: str) -> str:
        """*text* with every identifying piece cut out and spaces tidied."""
        if self._pattern is None:
            return text
        return " ".join(self._pattern.sub(" ", text).split())
