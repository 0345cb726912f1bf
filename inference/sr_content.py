"""TID 1500 content shared by the AI SR and the signed report: nodule groups and the root.

Each nodule is one measurement group (PS3.16 TID 1411 "Volumetric ROI Measurements"), in
this order, so that OHIF 3.13 can draw it and list it in its Measurements panel while the
ellipsoid stays the canonical geometry::

    CONTAINS CONTAINER (125007, DCM, "Measurement Group")                       [TID 1411]
      HAS OBS CONTEXT TEXT   (112039, DCM, "Tracking Identifier")    "Nodule 1"
      HAS OBS CONTEXT UIDREF (112040, DCM, "Tracking Unique Identifier")
      CONTAINS        CODE   (121071, DCM, "Finding") = (27925004, SCT, "Nodule")
      HAS CONCEPT MOD CODE   (363698007, SCT, "Finding Site") = (39607008, SCT, "Lung")
      HAS CONCEPT MOD TEXT   (111001, DCM, "Algorithm Name"), (111003, "Algorithm Version")
                                                                   [TID 4019, AI SR only]
      CONTAINS        SCOORD (111030, DCM, "Image Region") POLYLINE, closed square
        SELECTED FROM IMAGE  (260753009, SCT, "Source") -> CT slice nearest the centre
      CONTAINS        SCOORD3D (121231, DCM, "Volume Surface") ELLIPSOID
      CONTAINS        UIDREF (121232, DCM, "Source series for segmentation")
      CONTAINS        NUM    (81827009, SCT, "Diameter") mm
        INFERRED FROM SCOORD (111030, DCM, "Image Region") the same square
          SELECTED FROM IMAGE (260753009, SCT, "Source") -> the same slice
      CONTAINS        NUM    (111012, DCM, "Certainty of Finding") %   [AI findings only]
      CONTAINS        CODE   (type, 99PACSAI, "Nodule type") = solid | part-solid |
                             (112120, DCM, "Ground glass opacity")       [outlined nodules]
      CONTAINS        NUM    (type-probability, 99PACSAI, "Nodule type probability") %
      CONTAINS        NUM    (103339001, SCT, "Long axis") mm
      CONTAINS        NUM    (103340004, SCT, "Short axis") mm
      CONTAINS        NUM    (81827009, SCT, "Diameter") mm
        HAS CONCEPT MOD CODE (121401, DCM, "Derivation") = (373098007, SCT, "Mean")
      CONTAINS        NUM    (118565006, SCT, "Volume") mm3
      CONTAINS        NUM    (solid-diameter, 99PACSAI, "Solid component mean diameter") mm
                                                                  [solid and part-solid]

The type has no code in PS3.16 (only ground glass: DCM 112120, CID 6102), so solid and
part-solid, the concept name, the type's probability and the solid component's diameter
use our coding scheme 99PACSAI (a private scheme, PS3.16 section 8.2 "99" prefix).

Why this shape (OHIF 3.13, extension cornerstone-dicom-sr and @cornerstonejs/adapters):
- it draws the first SCOORD or SCOORD3D of a group and never draws SCOORD3D ELLIPSOID, so
  the 2D region comes first;
- it lists a group in the Measurements panel only once the SR is "rehydrated", which needs
  an adapter for the group: without a Cornerstone tracking identifier that is found by
  graphic code and type, and only (111030, DCM) POLYLINE of 4 or 5 points (RectangleROI)
  and POINT (Probe) are registered, hence a closed square rather than an ellipse;
- rehydration reads the geometry from the first NUM's INFERRED FROM SCOORD (TID 300 row
  form), hence the copy under the diameter.
TID 1411 lists Image Region and Volume Surface as alternatives, and TID 1419 carries no
coordinates under its NUMs; highdicom's template classes enforce both, so the group is
composed here from highdicom content items. The square is a display aid (the nodule's
bounding square on one slice); the ELLIPSOID remains the nodule's geometry.

The root (TID 1500) carries the "Imaging Measurements" container only when there are
groups (row 6 is required only without rows 10/12) and a "Qualitative Evaluations"
container (row 12) for document-level statements: OHIF aborts a whole SR on a measurement
group without NUM/SCOORD, so such statements never go into "Imaging Measurements".
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from pacs.results import Character

#: UMLS "Qualitative Evaluations", the concept name of TID 1500 row 12.
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: TID 1204 default language.
ENGLISH = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
#: Our private coding scheme for what PS3.16 has no code for (see the module docstring).
PRIVATE = "99PACSAI"
NODULE_TYPE = hd.sr.CodedConcept("type", PRIVATE, "Nodule type")
TYPE_PROBABILITY = hd.sr.CodedConcept("type-probability", PRIVATE, "Nodule type probability")
SOLID_DIAMETER = hd.sr.CodedConcept("solid-diameter", PRIVATE, "Solid component mean diameter")
TYPE_CODES = {
    "solid": hd.sr.CodedConcept("solid", PRIVATE, "Solid nodule"),
    "part-solid": hd.sr.CodedConcept("part-solid", PRIVATE, "Part-solid nodule"),
    "ground-glass": hd.sr.CodedConcept("112120", "DCM", "Ground glass opacity"),
}

Point3D = tuple[float, float, float]


def centre_slice(source: Sequence[Dataset], centre: Point3D) -> Dataset:
    """The source image whose plane is nearest to ``centre`` (patient LPS mm).

    Parameters
    ----------
    source : Sequence[pydicom.Dataset]
        Images of one series (headers suffice): ImagePositionPatient,
        ImageOrientationPatient.
    centre : tuple[float, float, float]
        A point in the series' frame of reference.

    Returns
    -------
    pydicom.Dataset
        The image at the least distance along the plane normal.
    """

    def distance(ds: Dataset) -> float:
        origin = np.array([float(v) for v in ds.ImagePositionPatient])
        orientation = [float(v) for v in ds.ImageOrientationPatient]
        normal = np.cross(orientation[:3], orientation[3:])
        return abs(float((np.asarray(centre) - origin) @ normal))

    return min(source, key=distance)


def square_outline(image: Dataset, centre: Point3D, radius_mm: float) -> np.ndarray:
    """Closed square ``(5, 2)`` around ``centre`` on ``image``, in SCOORD pixel units.

    Columns then rows, with the top left corner of the top left pixel at (0, 0)
    (PS3.3 C.18.6.1.1), clipped to the image; corners in the order top left, top right,
    bottom right, bottom left, top left.
    """
    origin = np.array([float(v) for v in image.ImagePositionPatient])
    orientation = [float(v) for v in image.ImageOrientationPatient]
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    spacing_row, spacing_col = (float(v) for v in image.PixelSpacing)
    offset = np.asarray(centre) - origin
    # ImagePositionPatient is the centre of the first pixel, i.e. (0.5, 0.5) (PS3.3
    # C.7.6.2.1.1: column index along the row direction).
    column = float(offset @ row_dir) / spacing_col + 0.5
    row = float(offset @ col_dir) / spacing_row + 0.5
    half_c, half_r = radius_mm / spacing_col, radius_mm / spacing_row
    corners = np.array(
        [
            [column - half_c, row - half_r],
            [column + half_c, row - half_r],
            [column + half_c, row + half_r],
            [column - half_c, row + half_r],
            [column - half_c, row - half_r],
        ]
    )
    corners[:, 0] = np.clip(corners[:, 0], 0.0, float(image.Columns))
    corners[:, 1] = np.clip(corners[:, 1], 0.0, float(image.Rows))
    return corners.astype(np.float32)


def nodule_group(
    source: Sequence[Dataset],
    *,
    tracking_uid: str,
    label: str,
    centre: Point3D,
    diameter_mm: float,
    probability: float | None,
    algorithm: hd.sr.AlgorithmIdentification | None,
    character: Character | None = None,
) -> hd.sr.ContainerContentItem:
    """One nodule as a TID 1411 measurement group in the display-friendly order above.

    Parameters
    ----------
    source : Sequence[pydicom.Dataset]
        The analysed CT series (headers suffice).
    tracking_uid : str
        Tracking Unique Identifier (112040), kept across the AI SR and signed reports.
    label : str
        Tracking Identifier (112039), e.g. ``"Nodule 1"``.
    centre : tuple[float, float, float]
        Centre in patient LPS mm.
    diameter_mm : float
        Diameter in mm; the ellipsoid is a sphere of this diameter.
    probability : float or None
        The AI's certainty (0..1), reported as "Certainty of Finding" in percent; None
        leaves the item out (a nodule a radiologist added).
    algorithm : highdicom.sr.AlgorithmIdentification or None
        The algorithm that measured the nodule (TID 4019); None for a person's report.
    character : pacs.results.Character, optional
        The nodule's type and measurements on its outline; left out when None.

    Returns
    -------
    highdicom.sr.ContainerContentItem
        The "Measurement Group" container, for the "Imaging Measurements" container.
    """
    image = centre_slice(source, centre)
    radius = diameter_mm / 2
    outline = square_outline(image, centre, radius)
    point = np.asarray(centre)
    # An ellipsoid (here a sphere) by the end points of its three axes (PS3.3 C.18.9.1.2).
    axes = np.concatenate([[point - radius * e, point + radius * e] for e in np.eye(3)])
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.MeasurementGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        template_id="1411",
    )
    content = hd.sr.ContentSequence()
    content.extend(hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=label))
    content.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.Finding,
            value=codes.SCT.Nodule,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    content.append(hd.sr.FindingSite(codes.SCT.Lung))
    if algorithm is not None:
        content.extend(algorithm)
    content.append(
        hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            source_image=hd.sr.SourceImageForRegion.from_source_image(image),
        )
    )
    content.extend(
        hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID,
            graphic_data=axes,
            frame_of_reference_uid=str(image.FrameOfReferenceUID),
            source_series=hd.sr.SourceSeriesForSegmentation(str(image.SeriesInstanceUID)),
        )
    )
    content.extend(
        hd.sr.Measurement(
            name=codes.SCT.Diameter,
            value=round(diameter_mm, 2),
            unit=codes.UCUM.Millimeter,
            referenced_coordinates=[
                hd.sr.CoordinatesForMeasurement(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=outline,
                    source_image=hd.sr.SourceImageForRegion.from_source_image(image),
                    purpose=codes.DCM.ImageRegion,
                )
            ],
        )
    )
    if probability is not None:
        content.extend(
            hd.sr.Measurement(
                name=codes.DCM.CertaintyOfFinding,
                value=round(100 * probability, 2),
                unit=codes.UCUM.Percent,
            )
        )
    if character is not None:
        content.extend(character_items(character))
    group.ContentSequence = content
    return group


def character_items(character: Character) -> list[hd.sr.ContentItem]:
    """Type (a qualitative evaluation) and the outline's measurements, as group items."""
    mm = codes.UCUM.Millimeter
    items: list[hd.sr.ContentItem] = []
    items.extend(hd.sr.QualitativeEvaluation(NODULE_TYPE, TYPE_CODES[character.type]))  # type: ignore[arg-type]
    measurements = [
        hd.sr.Measurement(
            TYPE_PROBABILITY, round(100 * character.type_probability, 2), codes.UCUM.Percent
        ),
        hd.sr.Measurement(codes.SCT.LongAxis, round(character.long_axis_mm, 2), mm),
        hd.sr.Measurement(codes.SCT.ShortAxis, round(character.short_axis_mm, 2), mm),
        hd.sr.Measurement(
            codes.SCT.Diameter,
            round(character.mean_diameter_mm, 2),
            mm,
            derivation=codes.SCT.Mean,
        ),
        hd.sr.Measurement(
            codes.SCT.Volume, round(character.volume_mm3, 1), codes.UCUM.CubicMillimeter
        ),
    ]
    if character.solid_diameter_mm is not None:
        measurements.append(
            hd.sr.Measurement(SOLID_DIAMETER, round(character.solid_diameter_mm, 2), mm)
        )
    for measurement in measurements:
        items.extend(measurement)  # type: ignore[arg-type]  # a template: a list of items
    return items


def measurement_report(
    observation_context: hd.sr.ObservationContext,
    groups: Sequence[hd.sr.ContainerContentItem],
    evaluations: Sequence[hd.sr.ContentItem],
    *,
    procedure_reported: hd.sr.CodedConcept,
    evaluation_algorithm: hd.sr.AlgorithmIdentification | None = None,
) -> hd.sr.ContainerContentItem:
    """The root of a TID 1500 Measurement Report.

    Parameters
    ----------
    observation_context : highdicom.sr.ObservationContext
        Who observed (a device for the AI, a person for a signed report), TID 1001.
    groups : Sequence[highdicom.sr.ContainerContentItem]
        Measurement groups (from :func:`nodule_group`); the "Imaging Measurements"
        container is left out when empty.
    evaluations : Sequence[highdicom.sr.ContentItem]
        CODE or TEXT items with relationship CONTAINS for "Qualitative Evaluations"
        (TID 1500 rows 13 and 14); at least one when ``groups`` is empty.
    procedure_reported : highdicom.sr.CodedConcept
        Procedure reported (121058), CID 100.
    evaluation_algorithm : highdicom.sr.AlgorithmIdentification, optional
        The algorithm behind ``evaluations`` (TID 1500 row 12b, TID 4019).

    Returns
    -------
    highdicom.sr.ContainerContentItem
        The root container, content of a :class:`highdicom.sr.Comprehensive3DSR`.

    Raises
    ------
    ValueError
        When both ``groups`` and ``evaluations`` are empty (TID 1500 needs row 6 or 12).
    """
    if not groups and not evaluations:
        raise ValueError("A measurement report needs measurement groups or evaluations.")
    root = hd.sr.ContainerContentItem(
        name=codes.cid7021.ImagingMeasurementReport, template_id="1500"
    )
    content = hd.sr.ContentSequence()
    content.extend(hd.sr.LanguageOfContentItemAndDescendants(ENGLISH))
    content.extend(observation_context)
    content.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=procedure_reported,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    if groups:
        measurements = hd.sr.ContainerContentItem(
            name=codes.DCM.ImagingMeasurements,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        measurements.ContentSequence = hd.sr.ContentSequence(groups)
        content.append(measurements)
    if evaluations:
        container = hd.sr.ContainerContentItem(
            name=QUALITATIVE_EVALUATIONS,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        items = hd.sr.ContentSequence()
        if evaluation_algorithm is not None:
            items.extend(evaluation_algorithm)
        items.extend(evaluations)
        container.ContentSequence = items
        content.append(container)
    root.ContentSequence = content
    return root
