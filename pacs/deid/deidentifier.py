"""De-identifying one instance for research or teaching export (PS3.15 Annex E).

The Basic Application Level Confidentiality Profile (E.2) with, as chosen, the Retain
Longitudinal Temporal Information with Modified Dates (E.3.6) and Clean Descriptors (E.3.5)
options. Pseudonyms, UIDs and date offsets are keyed by the project key, so exports of the same
project link up (same patient, same pseudonym; an SR still references its CT) and exports of
different projects do not.

Pixel data is not cleaned (no Clean Pixel Data Option): an instance whose pixels carry, or may
carry, burned-in text or a recognisable face is refused unless the caller forces it.
"""

from __future__ import annotations

import copy
from io import BytesIO

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

from pacs.deid.clean import Scrubber
from pacs.deid.errors import BurnedInAnnotation, UnreadableInstance
from pacs.deid.pseudonyms import PatientIdentity, ProjectKey, date_offset_days, pseudonym
from pacs.deid.table import ConfidentialityTable, Options, load_table
from pacs.deid.uidmap import UIDMap
from pacs.deid.walker import Context, apply_profile
from pacs.errors import InvalidInstance
from pacs.instance import REQUIRED_UIDS
from pacs.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, locate
from pacs.uids import is_valid_uid

# PS3.4 B.5: Secondary Capture (screen grabs, scanned documents) and Ultrasound images are where
# burned-in names and dates are the rule rather than the exception.
SECONDARY_CAPTURE = frozenset(
    f"1.2.840.10008.5.1.4.1.1.7{suffix}" for suffix in ("", ".1", ".2", ".3", ".4")
)
ULTRASOUND = frozenset(
    {"1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6.2", "1.2.840.10008.5.1.4.1.1.3.1"}
)
# PS3.16 CID 7050 codes and the matching text of Deidentification Method (0012,0063, LO).
BASIC_PROFILE = (codes.DCM.BasicApplicationConfidentialityProfile, "PS3.15 E Basic Profile")
MODIFIED_DATES = (
    codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
    "Retain Longitudinal Temporal Information Modified Dates",
)
CLEAN_DESCRIPTORS = (codes.DCM.CleanDescriptorsOption, "Clean Descriptors")
NOT_CLEANED_PIXELS = "Pixel data not cleaned: export forced despite possible burned-in text"


class Deidentifier:
    """De-identifies instances for one export project.

    Parameters
    ----------
    key : bytes
        The project key (at least 16 bytes): same key, same pseudonyms, UIDs and date offsets.
    options : Options
        The profile options to apply besides the Basic Profile.
    table : ConfidentialityTable, optional
        Table E.1-1; the checked-in extract by default.

    Raises
    ------
    InvalidProjectKey
        The key is too short.
    """

    def __init__(
        self, key: bytes, options: Options | None = None, table: ConfidentialityTable | None = None
    ) -> None:
        self.key = ProjectKey(key)
        self.options = options or Options()
        self.table = table or load_table()
        self.uids = UIDMap(self.key)

    def dataset(self, ds: Dataset, *, force: bool = False) -> Dataset:
        """A de-identified copy of *ds* (with File Meta Information); *ds* is not changed.

        Parameters
        ----------
        ds : Dataset
            The instance, as stored.
        force : bool
            Export even when the pixel data may show identifying text or features.

        Raises
        ------
        UnreadableInstance
            A required UID (SOP Class/Instance, Study, Series) is missing or invalid.
        BurnedInAnnotation
            The pixels are, or may be, identifying and *force* is false.
        """
        for keyword in REQUIRED_UIDS:
            if not is_valid_uid(str(ds.get(keyword, "")).strip()):
                raise UnreadableInstance(f"no valid {keyword}: not an instance of this archive")
        pixel_warnings = burned_in_reasons(ds)
        if pixel_warnings and not force:
            raise BurnedInAnnotation("; ".join(pixel_warnings) + " (refused unless forced)")
        identity = PatientIdentity.of(
            str(ds.get("PatientID", "") or ""),
            str(ds.get("IssuerOfPatientID", "") or ""),
            str(ds.StudyInstanceUID),
        )
        context = Context(
            table=self.table,
            options=self.options,
            SOPClassUID=str(ds.SOPClassUID),
            uids=self.uids,
            pseudonym=pseudonym(self.key, identity),
            date_offset=(
                date_offset_days(self.key, identity) if self.options.modified_dates else None
            ),
            scrubber=Scrubber.of(ds, self.table) if self.options.clean_descriptors else None,
        )
        out = copy.deepcopy(ds)
        apply_profile(out, context)
        # Every export carries the pseudonym, even from an instance that had no Patient ID.
        out.PatientID = out.PatientName = context.pseudonym
        self._record_method(out, forced=bool(pixel_warnings))
        out.file_meta = _file_meta(out, ds)
        return out

    def part10(self, data: bytes, *, force: bool = False) -> bytes:
        """De-identify a Part 10 file (or a data set without meta) into a Part 10 file.

        The transfer syntax is kept (compressed pixel data is not re-encoded).

        Raises
        ------
        UnreadableInstance
            The bytes are empty, truncated or not parsable as DICOM.
        BurnedInAnnotation
            As for :meth:`dataset`.
        """
        out = BytesIO()
        self.dataset(read_instance(data), force=force).save_as(out, enforce_file_format=True)
        return out.getvalue()

    def _record_method(self, ds: Dataset, *, forced: bool) -> None:
        """PS3.15 E.1.1 items 4-5: say that and how the identity was removed."""
        applied = [BASIC_PROFILE]
        if self.options.modified_dates:
            applied.append(MODIFIED_DATES)
        if self.options.clean_descriptors:
            applied.append(CLEAN_DESCRIPTORS)
        ds.PatientIdentityRemoved = "YES"
        methods = [str(m) for m in _values(ds.get("DeidentificationMethod"))]
        methods += [text for _, text in applied if text not in methods]
        if forced:
            methods.append(NOT_CLEANED_PIXELS)
        ds.DeidentificationMethod = methods
        items = list(ds.get("DeidentificationMethodCodeSequence", []))
        present = {(i.get("CodingSchemeDesignator"), i.get("CodeValue")) for i in items}
        items += [
            CodedConcept(code.value, code.scheme_designator, code.meaning)
            for code, _ in applied
            if (code.scheme_designator, code.value) not in present
        ]
        ds.DeidentificationMethodCodeSequence = items
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self.options.modified_dates else "REMOVED"
        )


def burned_in_reasons(ds: Dataset) -> list[str]:
    """Why the pixels of *ds* may identify the patient (empty when nothing says so).

    Burned In Annotation (0028,0301) YES, Recognizable Visual Features (0028,0302) YES, or a
    Secondary Capture or Ultrasound image that does not say it has no burned-in annotation.
    """
    reasons = []
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        reasons.append("Burned In Annotation is YES")
    if str(ds.get("RecognizableVisualFeatures", "")).strip().upper() == "YES":
        reasons.append("Recognizable Visual Features is YES")
    sop_class = str(ds.get("SOPClassUID", ""))
    may_have_text = (
        sop_class in SECONDARY_CAPTURE or sop_class in ULTRASOUND or ds.get("Modality") == "US"
    )
    if may_have_text and "BurnedInAnnotation" not in ds:
        reasons.append("a Secondary Capture or Ultrasound image without Burned In Annotation")
    return reasons


def read_instance(data: bytes) -> Dataset:
    """Parse a whole instance (pixel data included), every value decoded.

    Raises
    ------
    UnreadableInstance
        Empty, truncated or unparsable bytes.
    """
    try:
        located = locate(data)
        ds = read_dataset(
            BytesIO(located.body),
            is_implicit_VR=located.transfer_syntax_uid == ImplicitVRLittleEndian,
            is_little_endian=located.transfer_syntax_uid != ExplicitVRBigEndian,
        )
        for _ in ds.iterall():  # decode every value now: a bad one fails here, not half-way
            pass
    except InvalidInstance as exc:
        raise UnreadableInstance(str(exc)) from exc
    except Exception as exc:  # pydicom raises many types for a broken data set
        raise UnreadableInstance(f"unparsable data set: {exc}") from exc
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(located.transfer_syntax_uid)
    return ds


def _file_meta(out: Dataset, original: Dataset) -> FileMetaDataset:
    """File Meta Information for the de-identified instance (PS3.10 7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.SOPClassUID
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    original_meta = getattr(original, "file_meta", None)
    syntax = original_meta.get("TransferSyntaxUID") if original_meta is not None else None
    meta.TransferSyntaxUID = UID(str(syntax)) if syntax else UID(ImplicitVRLittleEndian)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list) else [value]
