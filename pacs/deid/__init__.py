"""De-identified export (PS3.15 Annex E): what the CLI's ``pacs export --deidentify`` and the
admin API call, one instance at a time.

``table`` loads the checked-in extract of Table E.1-1, ``actions`` parses its action codes and
chooses among combined ones, ``iod`` gives attribute types, ``pseudonyms`` and ``uidmap`` derive
keyed replacements, ``values`` and ``clean`` make replacement values, ``walker`` applies the
table to a data set at every depth, ``deidentifier`` checks the pixels and puts it together.
``export`` (imported by its users, not here: it needs the archive) chooses the studies, audits
them and yields their instances de-identified for the CLI's folders and the API's zip.
"""

from pacs.deid.actions import Action, ActionCode
from pacs.deid.deidentifier import Deidentifier, burned_in_reasons, read_instance
from pacs.deid.errors import (
    BurnedInAnnotation,
    DeidentificationError,
    InvalidProjectKey,
    UnreadableInstance,
)
from pacs.deid.table import ConfidentialityTable, Options, Rule, load_table

__all__ = [
    "Action",
    "ActionCode",
    "BurnedInAnnotation",
    "ConfidentialityTable",
    "DeidentificationError",
    "Deidentifier",
    "InvalidProjectKey",
    "Options",
    "Rule",
    "UnreadableInstance",
    "burned_in_reasons",
    "load_table",
    "read_instance",
]
