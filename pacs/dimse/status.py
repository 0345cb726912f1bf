"""DIMSE status codes the archive returns (PS3.4 B.2.3 for C-STORE, PS3.7 C for general ones).

The "Cannot understand" range 0xC000-0xCFFF is the standard's; the sub-codes below are ours so
that a peer's log tells the reasons apart. Every failure also carries an ErrorComment.
"""

from __future__ import annotations

SUCCESS = 0x0000
# PS3.4 C.4.1.1.4: C-FIND pending (a match follows) and cancelled.
PENDING = 0xFF00
CANCEL = 0xFE00
# PS3.7 C.4.1: a general failure, returned for an unexpected error of our own.
PROCESSING_FAILURE = 0x0110
# PS3.7 C.5.5 (general status): Refused: Not Authorized (the peer's registry entry does not
# permit the service).
NOT_AUTHORIZED = 0x0124
# PS3.4 B.2.3: Refused: Out of Resources (storage or index unavailable; the peer may retry).
OUT_OF_RESOURCES = 0xA700
# PS3.4 B.2.3: Error: Data Set does not match SOP Class.
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
# PS3.4 C.4.2.1.5 / C.4.3.1.4 (C-MOVE, C-GET): refusals.
UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
# PS3.4 C.4.1.1.4: Identifier does not match SOP Class (C-FIND, C-MOVE, C-GET).
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
# PS3.4 B.2.3: Error: Cannot understand.
CANNOT_UNDERSTAND = 0xC000  # unparsable or truncated data set
CANNOT_UNDERSTAND_INVALID_UID = 0xC001  # a required UID is missing or malformed
CANNOT_UNDERSTAND_CONFLICT = 0xC002  # contradicts the index (e.g. series under another study)
