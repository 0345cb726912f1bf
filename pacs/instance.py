"""What the index keeps of one instance: the attributes C-FIND and QIDO-RS match and return."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacs.errors import InvalidUID
from pacs.uids import is_valid_uid

log = logging.getLogger(__name__)
T = TypeVar("T")

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class PatientAttributes:
    PatientID: str  # "" when the instance has none (accepted, PS3.3 Type 2)
    IssuerOfPatientID: str
    PatientName: str | None
    PatientBirthDate: str | None
    PatientSex: str | None


@dataclass(frozen=True)
class StudyAttributes:
    StudyInstanceUID: str
    StudyDate: str | None
    StudyTime: str | None
    AccessionNumber: str | None
    StudyID: str | None
    StudyDescription: str | None
    ReferringPhysicianName: str | None


@dataclass(frozen=True)
class SeriesAttributes:
    SeriesInstanceUID: str
    Modality: str | None
    SeriesNumber: int | None
    SeriesDescription: str | None
    BodyPartExamined: str | None


@dataclass(frozen=True)
class InstanceAttributes:
    SOPInstanceUID: str
    SOPClassUID: str
    InstanceNumber: int | None
    Rows: int | None
    Columns: int | None
    NumberOfFrames: int | None
    SpecificCharacterSet: str | None


def _index_tags() -> frozenset[int]:
    """The tags of every attribute the index keeps (the attribute classes' fields are
    DICOM keywords), which :meth:`ParsedInstance.from_dataset` reads and nothing else."""
    keywords = [f.name for cls in ATTRIBUTE_CLASSES for f in fields(cls)]
    return frozenset(int(tag_for_keyword(keyword)) for keyword in keywords)  # type: ignore[arg-type]


ATTRIBUTE_CLASSES = (PatientAttributes, StudyAttributes, SeriesAttributes, InstanceAttributes)
#: What :meth:`ParsedInstance.from_dataset` needs of a data set (with the Specific
#: Character Set its text decodes by): ingest parses only these (:func:`pacs.part10.locate`).
INDEX_TAGS = _index_tags()


@dataclass(frozen=True)
class ParsedInstance:
    """The index attributes of a validated instance (valid on construction via from_dataset)."""

    patient: PatientAttributes
    study: StudyAttributes
    series: SeriesAttributes
    instance: InstanceAttributes

    @classmethod
    def from_dataset(cls, ds: Dataset) -> ParsedInstance:
        """Validate the UIDs of *ds* and extract its index attributes.

        Text is decoded with the data set's Specific Character Set (PS3.5 6.1); person names
        keep their component groups (``alphabetic=ideographic=phonetic``, PS3.5 6.2.1).
        A malformed optional attribute is logged and indexed as empty rather than rejected:
        the instance itself is stored as received.

        Raises
        ------
        InvalidUID
            A required UID is missing or not a valid UID (PS3.5 9.1).
        """
        uids = {keyword: _uid(ds, keyword) for keyword in REQUIRED_UIDS}
        return cls(
            patient=PatientAttributes(
                PatientID=_text(ds, "PatientID") or "",
                IssuerOfPatientID=_text(ds, "IssuerOfPatientID") or "",
                PatientName=_text(ds, "PatientName"),
                PatientBirthDate=_text(ds, "PatientBirthDate"),
                PatientSex=_text(ds, "PatientSex"),
            ),
            study=StudyAttributes(
                StudyInstanceUID=uids["StudyInstanceUID"],
                StudyDate=_text(ds, "StudyDate"),
                StudyTime=_text(ds, "StudyTime"),
                AccessionNumber=_text(ds, "AccessionNumber"),
                StudyID=_text(ds, "StudyID"),
                StudyDescription=_text(ds, "StudyDescription"),
                ReferringPhysicianName=_text(ds, "ReferringPhysicianName"),
            ),
            series=SeriesAttributes(
                SeriesInstanceUID=uids["SeriesInstanceUID"],
                Modality=_text(ds, "Modality"),
                SeriesNumber=_integer(ds, "SeriesNumber"),
                SeriesDescription=_text(ds, "SeriesDescription"),
                BodyPartExamined=_text(ds, "BodyPartExamined"),
            ),
            instance=InstanceAttributes(
                SOPInstanceUID=uids["SOPInstanceUID"],
                SOPClassUID=uids["SOPClassUID"],
                InstanceNumber=_integer(ds, "InstanceNumber"),
                Rows=_integer(ds, "Rows"),
                Columns=_integer(ds, "Columns"),
                NumberOfFrames=_integer(ds, "NumberOfFrames"),
                SpecificCharacterSet=_text(ds, "SpecificCharacterSet"),
            ),
        )


def _uid(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception as exc:  # pydicom raises many types for undecodable values
        raise InvalidUID(f"{keyword} cannot be read: {exc}") from exc
    if value is None or value == "":
        raise InvalidUID(f"{keyword} is missing")
    if not isinstance(value, str):  # a sequence or several values: str() may not even work
        raise InvalidUID(f"{keyword} is not one UID (a {type(value).__name__})")
    if not is_valid_uid(str(value)):
        raise InvalidUID(f"{keyword} {str(value)[:80]!r} is not a valid UID (PS3.5 9.1)")
    return str(value)


def _optional(ds: Dataset, keyword: str, convert: Callable[[Any], T]) -> T | None:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return convert(value)
    except Exception as exc:  # a malformed optional value must not lose the instance
        log.warning("ignoring unreadable %s: %s", keyword, exc)
        return None


def _as_text(value: Any) -> str | None:
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    return text.strip() or None


def _text(ds: Dataset, keyword: str) -> str | None:
    return _optional(ds, keyword, _as_text)


def _integer(ds: Dataset, keyword: str) -> int | None:
    return _optional(ds, keyword, int)
