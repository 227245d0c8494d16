"""Every coded concept the result objects use, in one place.

Standard codes come from SNOMED CT (SCT), DICOM (DCM), LOINC (LN) and UCUM, taken from
``pydicom.sr.codedict`` where it names them (so their values and meanings were checked
against the DICOM content mapping resource, PS3.16); the few without a name there are written
out with their PS3.16 / SNOMED meaning. Concepts no standard provides live under the private
coding scheme ``99CHESTCT`` (see ``PRIVATE_SCHEME``), declared in every object that uses it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipeline.types import ModelInfo

CODE_MEANING_MAX_CHARS = 64  # highdicom's limit for CodedConcept meanings (LO VR)


def _standard(code: object) -> CodedConcept:
    """A pydicom ``Code`` as a highdicom ``CodedConcept``."""
    return CodedConcept.from_code(code)  # type: ignore[arg-type]


def fresh(concept: CodedConcept) -> CodedConcept:
    """A new copy of a module constant, safe to extend (modifier sequences) or to nest.

    The constants here are datasets; adding attributes to one in place would change it for
    every later user.
    """
    return CodedConcept(
        concept.value, concept.scheme_designator, concept.meaning, concept.scheme_version
    )


# --- anatomy and laterality (SCT; CID 7150 categories, CID 7155 thoracic types, CID 244) ---
ANATOMICAL_STRUCTURE = _standard(codes.SCT.AnatomicalStructure)  # 91723000, CID 7150
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = _standard(codes.SCT.MorphologicallyAbnormalStructure)
LUNG = _standard(codes.SCT.Lung)  # 39607008
TRACHEA = _standard(codes.SCT.Trachea)  # 44567001
LEFT = _standard(codes.SCT.Left)  # 7771000
RIGHT = _standard(codes.SCT.Right)  # 24028007
BILATERAL = _standard(codes.SCT.Bilateral)  # 51440002
LATERALITY = _standard(codes.SCT.Laterality)  # 272741003, concept name of the modifier
LESION = _standard(codes.SCT.Lesion)  # 52988006, CID 7159

# --- findings and diagnoses (SNOMED CT; the COVID-19 code is from the US edition) ---
PNEUMONIA_SARS_COV_2 = CodedConcept("882784691000119100", "SCT", "Pneumonia caused by SARS-CoV-2")
PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
NORMAL = _standard(codes.SCT.Normal)  # 17621005
PRESENCE_OF_PROPERTY = _standard(codes.DCM.PresenceOfProperty)  # 121052
PRESENT = _standard(codes.DCM.Present)  # 121053
ABSENT = _standard(codes.DCM.Absent)  # 121054

# --- measurements (CID 7469 generic intensity and size, CID 7464 derivations, UCUM) ---
VOLUME = _standard(codes.SCT.Volume)  # 118565006
AREA = _standard(codes.SCT.Area)  # 42798000, CID 7469
COMMENT = CodedConcept("121106", "DCM", "Comment")
ATTENUATION_COEFFICIENT = _standard(codes.DCM.AttenuationCoefficient)  # 112031
MEAN = _standard(codes.SCT.Mean)  # 373098007, derivation
SUM_OF_SEGMENTED_VOXEL_VOLUMES = CodedConcept("126030", "DCM", "Sum of segmented voxel volumes")
PROBABILITY = _standard(codes.DCM.Probability)  # 122157
UNIT_MILLILITER = CodedConcept("ml", "UCUM", "milliliter")
UNIT_SQUARE_MILLIMETER = _standard(codes.UCUM.SquareMillimeter)  # mm2
UNIT_HOUNSFIELD = _standard(codes.UCUM.HounsfieldUnit)  # [hnsf'U]
UNIT_PERCENT = _standard(codes.UCUM.Percent)  # %
UNIT_PROBABILITY = CodedConcept("{probability}", "UCUM", "probability")  # dimensionless 0..1

# --- report context ---
# TID 1500 takes the procedure reported from CID 100 (Quantitative Diagnostic Imaging
# Procedures), which has no chest CT concept: "CT unspecified body region" is its CT entry. The
# chest is named by the finding sites (lung) of every measurement.
PROCEDURE_CT = _standard(codes.cid100.CTUnspecifiedBodyRegion)  # LN 25045-6
# TID 1500 row 12: document-level qualitative evaluations (no region, no measurement group).
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
# Contributing Equipment purposes (CID 7005).
ACQUISITION_EQUIPMENT = _standard(codes.DCM.AcquisitionEquipment)  # 109101
PROCESSING_EQUIPMENT = _standard(codes.DCM.ProcessingEquipment)  # 109102
ALGORITHM_FAMILY_AI = _standard(codes.DCM.ArtificialIntelligence)  # 123110, CID 7162
ALGORITHM_FAMILY_MORPHOLOGY = _standard(codes.DCM.MorphologicalOperations)  # 123104, CID 7162

# --- private concepts (no standard code exists) ---
PRIVATE_SCHEME = "99CHESTCT"
"""Coding scheme of this project's own concepts.

Codes in it name what only this node measures: the share of a lung covered by lesions, and
classifier classes that have no SNOMED concept ("not COVID-19 pneumonia" is the absence of a
finding, not a diagnosis). The designator starts with "99" as PS3.3 §8.2 requires for local
schemes; every object using it lists it in the Coding Scheme Identification Sequence.
"""
LESION_BURDEN = CodedConcept("LESIONBURDEN", PRIVATE_SCHEME, "Lesion volume as percent of lung")
NOT_COVID19_PNEUMONIA = CodedConcept("NONCOVID", PRIVATE_SCHEME, "No COVID-19 pneumonia")



# Code meanings as the templates and PS3.16 spell them, for codes a library writes differently
# (highdicom 0.28 writes "Source Image for Segmentation"; TID 1411 says "Source image for
# segmentation"). Validators compare meanings literally and warn on every difference.
TEMPLATE_MEANINGS: dict[tuple[str, str], str] = {
    ("DCM", "121233"): "Source image for segmentation",
    ("DCM", "121232"): "Source series for segmentation",
    ("DCM", "121191"): "Referenced Segment",
    ("DCM", "121071"): "Finding",
    ("SCT", "276214006"): "Finding category",
    ("DCM", "111001"): "Algorithm Name",
    ("DCM", "111002"): "Algorithm Parameters",
    ("DCM", "111003"): "Algorithm Version",
    ("DCM", "111000"): "Algorithm Family",
}


def conform_meanings(node: Dataset | Sequence[Dataset]) -> int:
    """Rewrite, in place, every code meaning listed in ``TEMPLATE_MEANINGS`` inside a dataset or
    a sequence of datasets (recursively); return how many were changed."""
    items = [node] if isinstance(node, Dataset) else list(node)
    changed = 0
    for item in items:
        key = (str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeValue", "")))
        wanted = TEMPLATE_MEANINGS.get(key)
        if wanted is not None and item.get("CodeMeaning") != wanted:
            item.CodeMeaning = wanted
            changed += 1
        for element in item:
            if element.VR == "SQ":
                changed += conform_meanings(list(element.value))
    return changed


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """Coding Scheme Identification Sequence item declaring ``PRIVATE_SCHEME``."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="Chest CT DICOM node concepts",
        responsible_organization="chest-ct-dicomnode project",
    )


LATERALITY_CODES: dict[str, CodedConcept] = {"left": LEFT, "right": RIGHT, "bilateral": BILATERAL}

_COVID_CLASS_RE = re.compile(r"^(covid[-_ ]?19|covid|sars[-_ ]?cov[-_ ]?2|ncp)$")
_NON_COVID_CLASS_RE = re.compile(r"^non[-_ ]?covid([-_ ]?19)?$")
_PNEUMONIA_CLASS_RE = re.compile(r"^(cap|pneumonia|cp|other[-_ ]pneumonia)$")
_NORMAL_CLASS_RE = re.compile(r"^(normal|healthy|no[-_ ]finding)$")


def class_code(class_name: str) -> CodedConcept:
    """The coded finding of a classifier class name (e.g. "covid19", "non-covid", "normal").

    Unknown names get a private code carrying the name itself, so nothing is silently mapped
    to a wrong diagnosis.
    """
    key = class_name.strip().lower()
    if _COVID_CLASS_RE.match(key):
        return PNEUMONIA_SARS_COV_2
    if _NON_COVID_CLASS_RE.match(key):
        return NOT_COVID19_PNEUMONIA
    if _PNEUMONIA_CLASS_RE.match(key):
        return PNEUMONIA
    if _NORMAL_CLASS_RE.match(key):
        return NORMAL
    value = re.sub(r"[^A-Z0-9]+", "", key.upper())[:16] or "UNKNOWN"
    return CodedConcept(f"CLS{value}"[:16], PRIVATE_SCHEME, class_name[:CODE_MEANING_MAX_CHARS])


def algorithm_family(model: ModelInfo) -> CodedConcept:
    """CID 7162 family: weight-free algorithms are morphology, trained models are AI."""
    return ALGORITHM_FAMILY_AI if model.sha256 else ALGORITHM_FAMILY_MORPHOLOGY


def uses_private_scheme(*concepts: CodedConcept) -> bool:
    """True when any concept is coded in ``PRIVATE_SCHEME``."""
    return any(c.scheme_designator == PRIVATE_SCHEME for c in concepts)
