"""The objects a server process makes while it starts, kept out of the garbage collector's way.

A receiver holds a few hundred thousand objects once it is up (modules, SQLAlchemy's engine and
tables, pydicom's dictionaries, pynetdicom's presentation contexts), and every full collection
walked all of them: pynetdicom's server runs ``gc.collect()`` every 60 connections (to reclaim
the cycles of finished associations), and the interpreter's own full collections come with the
objects each stored instance leaves behind. One such collection took ~110 ms of a receiver's
CPU in a profile of one association per instance (1.8 ms an association). Frozen, those objects
are never walked again; what an association or a request makes is collected as before.
"""

from __future__ import annotations

import gc


def freeze_start_up() -> None:
    """Collect what start-up left behind, then exempt every object alive now from later
    collections (``gc.freeze``). Call it once the process is ready to serve."""
    gc.collect()
    gc.freeze()
