"""The radiologist's signed report as a TID 1500 Comprehensive 3D SR.

The review backend builds one on signing and one per amendment (same series, a new
instance each revision), stores it through the archive's one ingest path, and never
touches the AI SR, which the report names as a predecessor. Nodules use the same
measurement group as the AI SR (:func:`inference.sr_content.nodule_group`), so OHIF draws
and lists them the same way and tracking UIDs carry over. Content tree::

    CONTAINER (126000, DCM, "Imaging Measurement Report")                       [TID 1500]
      HAS CONCEPT MOD CODE (121049, DCM, "Language of Content Item and Descendants")
      HAS OBS CONTEXT CODE (121005, DCM, "Observer Type") = (121006, DCM, "Person")
      HAS OBS CONTEXT PNAME (121008, DCM, "Person Observer Name")
      HAS OBS CONTEXT TEXT (128774, DCM, "Person Observer's Login Name")
      HAS OBS CONTEXT TEXT (121009, DCM, "Person Observer's Organization Name")
      HAS CONCEPT MOD CODE (121058, DCM, "Procedure reported") = (24627-2, LN, "CT Chest")
      CONTAINS CONTAINER (126010, DCM, "Imaging Measurements")       [absent without nodules]
        CONTAINS CONTAINER (125007, DCM, "Measurement Group") ...     one per nodule
      CONTAINS CONTAINER (C0034375, UMLS, "Qualitative Evaluations")
        CONTAINS TEXT (121073, DCM, "Impression")
        CONTAINS TEXT (1362105002, SCT, "Lung Imaging Reporting and Data System category")
        CONTAINS TEXT (121106, DCM, "Comment")                 the category's caveat

Lung-RADS: SNOMED CT has the observable (1362105002) but no codes for the categories
(0, 1, 2, 3, 4A, 4B, 4X), and neither DICOM PS3.16 nor LOINC offers a value set usable here,
so the category is a TEXT item under that coded concept name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DT

from inference.dicom_results import CT_CHEST, MANUFACTURER
from inference.sr_content import measurement_report, nodule_group
from pacs.results import Character

#: SNOMED CT 1362105002, an observable entity (International Edition).
LUNG_RADS_CATEGORY = hd.sr.CodedConcept(
    "1362105002", "SCT", "Lung Imaging Reporting and Data System category"
)
REPORT_SERIES_NUMBER = 9003
REPORT_SERIES_DESCRIPTION = "Signed lung nodule report"


@dataclass(frozen=True)
class ReportedNodule:
    """A nodule the radiologist confirmed or added, as it goes into the signed report.

    Raises ``ValueError`` on construction for a non-positive diameter, a probability
    outside 0..1, or a probability on a nodule the radiologist added.
    """

    tracking_uid: str  # carried over from the AI finding, or new for an added nodule
    label: str  # tracking identifier, e.g. "Nodule 1"
    x: float  # centre, patient LPS mm
    y: float
    z: float
    diameter_mm: float
    probability: float | None  # the AI's certainty; None for a nodule the radiologist added
    added_by_radiologist: bool
    # Type, axes and volume measured on the AI's outline (an AI nodule whose size was kept).
    character: Character | None = None

    def __post_init__(self) -> None:
        if not self.diameter_mm > 0:
            raise ValueError(f"diameter must be positive, not {self.diameter_mm}")
        if self.probability is not None and not 0 <= self.probability <= 1:
            raise ValueError(f"probability must lie in 0..1, not {self.probability}")
        if self.added_by_radiologist and self.probability is not None:
            raise ValueError("a nodule the radiologist added has no AI probability")


@dataclass(frozen=True)
class Signature:
    """Who verified the report, for whom, and when (Verifying Observer Sequence)."""

    observer_name: str  # VerifyingObserverName (PN); the token subject, e.g. "dr-house"
    organization: str  # VerifyingOrganization
    when: datetime  # VerificationDateTime


def person_name(name: str) -> str:
    """``name`` as a PN value: a name without ``^`` is one family-name component.

    Raises
    ------
    ValueError
        When ``name`` is empty, has a backslash or control character (not allowed in
        PN, PS3.5 6.2), or a component group longer than 64 characters.
    """
    if not name or "\\" in name or any(ord(c) < 32 for c in name):
        raise ValueError(f"not usable as a person name: {name!r}")
    value = name if "^" in name else f"{name}^"
    if any(len(group) > 64 for group in value.split("=")):
        raise ValueError(f"person name longer than 64 characters: {name!r}")
    return value


def build_signed_sr(
    source: Sequence[Dataset],
    nodules: Sequence[ReportedNodule],
    *,
    impression: str,
    lung_rads: str,
    lung_rads_note: str,
    signature: Signature,
    predecessors: Sequence[Dataset],
    series_instance_uid: str,
    instance_number: int,
) -> Dataset:
    """The signed report: a verified, complete TID 1500 Comprehensive 3D SR.

    Parameters
    ----------
    source : Sequence[pydicom.Dataset]
        The CT series the AI analysed. Headers suffice (no pixel data is read): patient
        and study attributes, UIDs and the image plane of each slice.
    nodules : Sequence[ReportedNodule]
        Confirmed and added nodules only; empty for a signed "no nodules" report.
    impression : str
        Free-text impression (121073, DCM, "Impression").
    lung_rads : str
        The Lung-RADS category carried in the report, e.g. ``"4A"``.
    lung_rads_note : str
        How the category was set, e.g. ``"size-based suggestion, solid assumed; set by
        radiologist"``; written as a Comment beside it.
    signature : Signature
        The verifying radiologist, organization and time.
    predecessors : Sequence[pydicom.Dataset]
        The AI SR, and the previous signed SR for an amendment (headers suffice):
        PredecessorDocumentsSequence.
    series_instance_uid : str
        The report series, the same for every revision.
    instance_number : int
        Revision number, 1-based.

    Returns
    -------
    pydicom.Dataset
        A :class:`highdicom.sr.Comprehensive3DSR` with VerificationFlag VERIFIED,
        CompletionFlag COMPLETE and PreliminaryFlag FINAL.

    Raises
    ------
    ValueError
        For an empty impression or category, a revision number below 1, an observer
        name unusable as a PN, or an organization that is empty or longer than 64
        characters (VerifyingOrganization is a type 1 LO).
    """
    if not impression.strip() or not lung_rads.strip():
        raise ValueError("a signed report needs an impression and a Lung-RADS category")
    if not 0 < len(signature.organization.strip()) <= 64:
        raise ValueError(f"not usable as the verifying organization: {signature.organization!r}")
    if instance_number < 1:
        raise ValueError(f"revision numbers start at 1, not {instance_number}")
    name = person_name(signature.observer_name)
    person = hd.sr.ObserverContext(
        observer_type=codes.cid270.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=name,
            login_name=signature.observer_name,
            organization_name=signature.organization,
        ),
    )
    groups = [
        nodule_group(
            source,
            tracking_uid=nodule.tracking_uid,
            label=nodule.label,
            centre=(nodule.x, nodule.y, nodule.z),
            diameter_mm=nodule.diameter_mm,
            probability=nodule.probability,
            algorithm=None,
            character=nodule.character,
        )
        for nodule in nodules
    ]
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    evaluations = [
        hd.sr.TextContentItem(codes.DCM.Impression, impression, relationship_type=contains),
        hd.sr.TextContentItem(LUNG_RADS_CATEGORY, lung_rads, relationship_type=contains),
    ]
    if lung_rads_note.strip():
        evaluations.append(
            hd.sr.TextContentItem(codes.DCM.Comment, lung_rads_note, relationship_type=contains)
        )
    root = measurement_report(
        hd.sr.ObservationContext(observer_person_context=person),
        groups,
        evaluations,
        procedure_reported=CT_CHEST,
    )
    # Local time, as highdicom stamps InstanceCreationDate/Time, with the offset stated so
    # that no reader takes a UTC time for local (PS3.3 C.12.1.1.8).
    when = signature.when.astimezone()
    report = hd.sr.Comprehensive3DSR(
        evidence=list(source),
        content=root,
        series_instance_uid=series_instance_uid,
        series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=str(generate_uid()),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        series_description=REPORT_SERIES_DESCRIPTION,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=name,
        verifying_organization=signature.organization,
        previous_versions=list(predecessors),
        content_date=when.date(),
        content_time=when.time(),
    )
    # highdicom stamps the verification with the time of the call; the signature's time
    # is the one that counts (PS3.3 C.17.2.1, VerificationDateTime).
    report.VerifyingObserverSequence[0].VerificationDateTime = DT(when)
    report.TimezoneOffsetFromUTC = when.strftime("%z")
    return report
