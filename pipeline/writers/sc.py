"""Secondary Capture Image datasets (PS3.3 A.8.1) of the overlay series, built by highdicom.

``highdicom.sc.SCImage.from_ref_dataset`` copies the patient and study of the source CT
image, adds the scanner as acquisition equipment and itself as processing equipment; this
module adds what an overlay image says about itself: the series description and body part,
this software as the SC device, the algorithms as contributing equipment
(``pipeline.writers.equipment``), workstation conversion ("WSD"), the derivation and its
source CT image (Source Image Sequence, purpose CID 7202 "Source image for image processing
operation"), "burned-in annotation" and the not-for-diagnostic-use comment.

The SC IOD has no Image Plane or Frame of Reference module: an image carries no
ImagePositionPatient/ImageOrientationPatient, only Pixel Spacing (so viewers measure in mm)
and Patient Orientation (the patient directions of its rows and columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from highdicom.base_content import ContributingEquipment
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from pipeline.writers import render
from pipeline.writers.equipment import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    MANUFACTURER_MODEL_NAME,
)
from pipeline.writers.overlay_draw import NOT_FOR_DIAGNOSTIC_USE

SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
OVERLAY_SERIES_DESCRIPTION = f"AI overlay - {NOT_FOR_DIAGNOSTIC_USE}"
CONVERSION_TYPE = "WSD"  # workstation (PS3.3 C.8.6.1)
BODY_PART_EXAMINED = "CHEST"
IMAGE_TYPE = ["DERIVED", "SECONDARY"]
# Purpose of Reference of a Source Image Sequence item (CID 7202).
SOURCE_PURPOSE_CODE = hd.sr.CodedConcept(
    "121322", "DCM", "Source image for image processing operation"
)
BITS_PER_SAMPLE = 8
SOFTWARE_VERSIONS_TAG = Tag("SoftwareVersions")
# Patient and study attributes highdicom does not copy from the source image.
COPIED_FROM_SOURCE = ("StudyDescription", "IssuerOfPatientID")


@dataclass(frozen=True)
class SeriesContext:
    """What every image of one overlay series shares."""

    study_instance_uid: str
    series_uid: str
    series_number: int
    created: datetime
    software_versions: list[str]
    equipment: Sequence[ContributingEquipment]


@dataclass(frozen=True)
class ImageSpec:
    """One image of the series: its UID, number, source CT image and geometry."""

    sop_uid: str
    instance_number: int
    source: Dataset
    derivation: str
    pixel_spacing_mm: tuple[float, float] | None
    patient_orientation: tuple[str, str] | None  # None: not an image of the patient's anatomy


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [SOURCE_PURPOSE_CODE]
    return item


def sc_image(context: SeriesContext, rgb: render.RgbImage, spec: ImageSpec) -> hd.sc.SCImage:
    """A Secondary Capture Image around one (rows, columns, 3) uint8 RGB image."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (rows, columns, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    spacing = None
    if spec.pixel_spacing_mm is not None:
        spacing = (round(float(spec.pixel_spacing_mm[0]), 6),
                   round(float(spec.pixel_spacing_mm[1]), 6))
    ds = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=spec.source,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=BITS_PER_SAMPLE,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=context.series_uid,
        series_number=context.series_number,
        sop_instance_uid=spec.sop_uid,
        instance_number=spec.instance_number,
        manufacturer=MANUFACTURER,
        pixel_spacing=spacing,  # type: ignore[arg-type]  # highdicom annotates ints
        patient_orientation=spec.patient_orientation or ("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=list(context.equipment),
        series_description=OVERLAY_SERIES_DESCRIPTION,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_date=context.created.date(),
        content_time=context.created.time(),
        series_date=context.created.date(),
        series_time=context.created.time(),
    )
    _describe(ds, context, spec)
    return ds


def _describe(ds: hd.sc.SCImage, context: SeriesContext, spec: ImageSpec) -> None:
    """The attributes highdicom leaves to the caller (see the module docstring)."""
    if spec.patient_orientation is None:
        ds.PatientOrientation = []  # type 2C, empty: a text page, no patient directions
    if "StudyInstanceUID" in ds and ds.StudyInstanceUID != context.study_instance_uid:
        raise ValueError("the source image belongs to another study than the result")
    for keyword in COPIED_FROM_SOURCE:
        if keyword in spec.source and keyword not in ds:
            setattr(ds, keyword, spec.source[keyword].value)
    ds.BodyPartExamined = BODY_PART_EXAMINED
    ds.ConversionType = CONVERSION_TYPE
    ds.add_new(SOFTWARE_VERSIONS_TAG, "LO", list(context.software_versions))
    ds.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    ds.SecondaryCaptureDeviceManufacturerModelName = MANUFACTURER_MODEL_NAME
    ds.SecondaryCaptureDeviceSoftwareVersions = context.software_versions
    ds.DateOfSecondaryCapture = DA(context.created.date())
    ds.TimeOfSecondaryCapture = TM(context.created.time().replace(microsecond=0))
    ds.ImageType = IMAGE_TYPE
    ds.DerivationDescription = spec.derivation
    ds.SourceImageSequence = [_source_reference(spec.source)]
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    ds.ImageComments = NOT_FOR_DIAGNOSTIC_USE
    if "PixelSpacing" in ds:
        ds.NominalScannedPixelSpacing = list(ds.PixelSpacing)
