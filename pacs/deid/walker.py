"""Applying Table E.1-1 to every element of a data set, at every depth of nested sequences.

Per element: private attributes are removed (Basic Profile, no Retain Safe Private Option);
otherwise its row of the table (or, for a date the table does not list, ``UNLISTED_DATE``)
gives the code in force under the chosen options, the attribute's type in the IOD at that place
picks among combined codes (``ActionCode.resolve``), and the action is applied. A kept sequence
(K, D, C, U*) is walked item by item. Every remaining UI value that names an instance is
replaced through the project's ``UIDMap``, so references stay consistent at any depth.

Beyond the table: group lengths are removed (they would be wrong after the changes), and a
whole overlay (60xx) or curve (50xx) group goes when its data must go, since an overlay plane
without its data is not valid (PS3.3 C.9.2) and overlays are where burned-in text is drawn.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.deid.actions import Action
from pacs.deid.clean import FREE_TEXT_VRS, Scrubber
from pacs.deid.iod import attribute_type
from pacs.deid.table import UNLISTED_DATE, ConfidentialityTable, Options, Rule
from pacs.deid.uidmap import UIDMap, is_definition
from pacs.deid.values import dummy, shifted

PSEUDONYMOUS = frozenset({"PatientID", "PatientName"})  # Z, given the pseudonym (E.1.1 allows)
_DATE_VRS = frozenset({"DA", "DT"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "PN", "SH", "UC"})
_REPEATING_GROUPS = ((0x5000, 0x50FF), (0x6000, 0x60FF))  # curves, overlays


@dataclass(frozen=True)
class Context:
    """What the treatment of an element depends on, for one instance.

    Attributes
    ----------
    table : ConfidentialityTable
        Table E.1-1.
    options : Options
        The profile options chosen.
    SOPClassUID : str
        The instance's SOP class: its IOD gives attribute types.
    uids : UIDMap
        The project's UID replacement.
    pseudonym : str
        The patient's pseudonym (Patient ID, Patient's Name).
    date_offset : int or None
        Days to move dates by (Modified Dates Option), None without the option.
    scrubber : Scrubber or None
        The instance's identifying text (Clean Descriptors Option), None without the option.
    """

    table: ConfidentialityTable
    options: Options
    SOPClassUID: str
    uids: UIDMap
    pseudonym: str
    date_offset: int | None
    scrubber: Scrubber | None


def apply_profile(ds: Dataset, context: Context) -> None:
    """De-identify *ds* in place, at every depth."""
    _detach(ds, set())
    walk(ds, context)


def walk(ds: Dataset, context: Context, path: tuple[str, ...] = ()) -> None:
    """De-identify *ds* in place; *path* holds the keywords of the sequences it is nested in."""
    for tag in list(ds.keys()):
        if tag.is_private or tag.element == 0 or _in_repeating_group(tag.group, context):
            del ds[tag]
            continue
        element = ds[tag]
        action = _action(element, context, path)
        if action is Action.X:
            del ds[tag]
        elif element.VR == "SQ":
            _sequence(element, action, context, path)
        else:
            _value(element, action, context)


def _action(element: DataElement, context: Context, path: tuple[str, ...]) -> Action:
    rule = context.table.rule_for(element.tag)
    if rule is None and element.VR in _DATE_VRS:
        rule = UNLISTED_DATE
    if rule is None:
        return Action.K
    action = _resolve(rule, context.options, element, context, path)
    if action is Action.C and element.VR in FREE_TEXT_VRS:
        # Free text cannot be shown clean: the Basic Profile's action applies instead.
        action = _resolve(rule, Options(), element, context, path)
    return action


def _resolve(
    rule: Rule, options: Options, element: DataElement, context: Context, path: tuple[str, ...]
) -> Action:
    code = rule.code(options)
    if len(code.alternatives) == 1:
        return code.alternatives[0]
    return code.resolve(attribute_type(context.SOPClassUID, path, element.keyword))


def _sequence(
    element: DataElement, action: Action, context: Context, path: tuple[str, ...]
) -> None:
    if action is Action.Z:
        element.value = Sequence([])
        return
    for item in element.value:  # K, D, C and U*: keep the sequence, de-identify its items
        walk(item, context, (*path, element.keyword))


def _value(element: DataElement, action: Action, context: Context) -> None:
    if action is Action.Z:
        if element.keyword in PSEUDONYMOUS:
            element.value = context.pseudonym
        else:
            element.value = element.empty_value
    elif action is Action.D:
        element.value = dummy(element)
    elif action is Action.C:
        _clean(element, context)
    if element.VR == "UI" and element.value:
        _replace_uids(element, context.uids)


def _clean(element: DataElement, context: Context) -> None:
    """Action C: move dates by the patient's offset; clean descriptors; keep the rest.

    Times (TM) are kept: whole-day offsets leave the time of day as it was.
    """
    if element.VR in _DATE_VRS:
        element.value = (
            shifted(element, context.date_offset)
            if context.date_offset is not None
            else dummy(element)
        )
    elif element.VR in _TEXT_VRS and context.scrubber is not None and element.value:
        values = element.value if element.VM > 1 else [element.value]
        # A descriptor that was nothing but identifying text gets a dummy, not an empty value
        # (it may be Type 1, as Structure Set Label is).
        cleaned = [context.scrubber.clean(str(v)) or dummy(element) for v in values]
        element.value = cleaned if len(cleaned) > 1 else cleaned[0]


def _replace_uids(element: DataElement, uids: UIDMap) -> None:
    values = element.value if element.VM > 1 else [element.value]
    new = [
        v if not v or is_definition(element.keyword, str(v)) else uids.replace(str(v))
        for v in values
    ]
    element.value = new if len(new) > 1 else new[0]


def _in_repeating_group(group: int, context: Context) -> bool:
    """True for a curve or overlay group whose data Table E.1-1 removes (X)."""
    for first, last in _REPEATING_GROUPS:
        if first <= group <= last and group % 2 == 0:
            data = context.table.rule_for((group << 16) | (0x3000 if group >= 0x6000 else 0))
            return data is not None and data.code(context.options).alternatives == (Action.X,)
    return False


def _detach(ds: Dataset, seen: set[int]) -> None:
    """Make every sequence item a distinct object.

    highdicom puts one item object in several sequences (a SEG's referenced instance and the
    source image of its frame), and ``copy.deepcopy`` keeps such items shared: walked twice,
    an item would have its UIDs replaced twice.
    """
    for element in ds:
        if element.VR != "SQ":
            continue
        for index, item in enumerate(element.value):
            if id(item) in seen:
                item = copy.deepcopy(item)
                element.value[index] = item
            seen.add(id(item))
            _detach(item, seen)
