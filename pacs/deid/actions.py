"""The action codes of PS3.15 Table E.1-1 and the rule that chooses among combined ones.

A cell of the table holds one action or, where the attribute's type differs between IODs,
alternatives separated by "/" (X/Z, X/D, Z/D, X/Z/D, X/Z/U*). PS3.15 E.1.1 chooses the first
alternative unless the attribute's type in the IOD needs a later one to stay conformant:
Type 3 may be removed (X), Type 2 must stay present (Z, empty), Type 1 must keep a value (D).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """One action of Table E.1-1 (PS3.15 E.1.1, the list under the table)."""

    D = "D"  # replace with a non-zero length dummy value consistent with the VR
    Z = "Z"  # replace with a zero length value (or a dummy value consistent with the VR)
    X = "X"  # remove
    K = "K"  # keep (a sequence is kept and its items are de-identified in turn)
    C = "C"  # clean: replace with values of similar meaning known not to identify
    U = "U"  # replace a UID with one internally consistent within the set of instances


# Combined codes the standard uses; anything else in the table is a transcription error.
_COMBINED = frozenset({"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})
# Types of PS3.5 7.4 as they decide among alternatives: what the IOD requires of a present
# attribute. Conditional types count as their unconditional form (the condition may hold).
_REQUIRES_VALUE = frozenset({"1", "1C"})
_REQUIRES_PRESENCE = frozenset({"2", "2C"})
_OPTIONAL = "3"


@dataclass(frozen=True)
class ActionCode:
    """One cell of Table E.1-1: a single action or alternatives chosen by attribute type.

    Attributes
    ----------
    text : str
        The code as the table writes it ("X/Z/U*").
    alternatives : tuple[Action, ...]
        The actions in the table's order ("U*" is U applied to the UIDs of a sequence).
    """

    text: str
    alternatives: tuple[Action, ...]

    @classmethod
    def parse(cls, text: str) -> ActionCode:
        """Parse one cell of the table.

        Raises
        ------
        ValueError
            *text* is not an action code of Table E.1-1.
        """
        parts = text.strip().split("/")
        if len(parts) > 1 and text.strip() not in _COMBINED:
            raise ValueError(f"not an action code of PS3.15 Table E.1-1: {text!r}")
        try:
            actions = tuple(Action(part.removesuffix("*")) for part in parts)
        except ValueError as exc:
            raise ValueError(f"not an action code of PS3.15 Table E.1-1: {text!r}") from exc
        return cls(text.strip(), actions)

    def resolve(self, attribute_type: str | None) -> Action:
        """The action to take for an attribute of the given type in the instance's IOD.

        Parameters
        ----------
        attribute_type : str or None
            "1", "1C", "2", "2C" or "3" as PS3.3 gives it for this attribute at this place in
            the IOD; None where that is not known (an IOD or a nesting we have no table for).

        Returns
        -------
        Action
            For a single code, that action. For X/Z/U*, always U: the sequence is kept with
            its UIDs replaced (a remapped reference identifies nobody, and research needs a
            SEG's frames to keep pointing at the CT slices they were derived from). For the
            others, the first alternative the type allows (PS3.15 E.1.1); with the type
            unknown, the last one, which is conformant whatever the type (the most
            conservative choice that never breaks the IOD: D and Z keep no original value).
        """
        if len(self.alternatives) == 1:
            return self.alternatives[0]
        if Action.U in self.alternatives:
            return Action.U
        if attribute_type in _REQUIRES_VALUE:
            return Action.D if Action.D in self.alternatives else self.alternatives[-1]
        if attribute_type in _REQUIRES_PRESENCE:
            for action in (Action.Z, Action.D):
                if action in self.alternatives:
                    return action
        if attribute_type == _OPTIONAL:
            return self.alternatives[0]
        return self.alternatives[-1]
