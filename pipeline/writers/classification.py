"""The classifier's result as study-level qualitative evaluations of the main report.

A classification concerns the whole study, not a region, so it is not a measurement group:
TID 1500 holds it in its document-level "Qualitative Evaluations" container (TID 1500 rows
12-14, the TID 1501 kind of evaluation without a group). Validators that pick one template for
all groups of the "Imaging Measurements" container (PixelMed checks every group against
TID 1411 as soon as one references a segment) would otherwise read a region-less
classification group as a volumetric group without a region, which is an error.

Content (``classification_evaluations``), in this order:

- one CODE per class: concept name the class's finding (``codes.class_code``), value
  "Present" for the predicted class and "Absent" for the others, with the probability the
  model gave that class as a NUM (``Probability``, UCUM ``{probability}``) it HAS PROPERTIES;
  every class is "Indeterminate" when the verdict (``pipeline.stages.verdict``) is
  indeterminate or the input lies outside the validated domain: nothing is called present or
  absent then;
- one TEXT "Algorithm Name" and one "Algorithm Version" naming the classifier (its weights
  checksum and Device UID are in the Contributing Equipment Sequence).

This is the one place the classification content is built: further evaluations of the same
result (a verdict, a calibrated probability, whether the study lies in the validated domain)
belong here as more items of the same container.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes as dicom_codes

from pipeline.types import Classification
from pipeline.writers import codes

PROBABILITY_DIGITS = 6
INDETERMINATE = hd.sr.CodedConcept("82334004", "SCT", "Indeterminate")


def _class_evaluation(
    class_name: str, probability: float, presence: hd.sr.CodedConcept
) -> hd.sr.CodeContentItem:
    item = hd.sr.CodeContentItem(
        name=codes.fresh(codes.class_code(class_name)),
        value=codes.fresh(presence),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    item.ContentSequence = hd.sr.ContentSequence([
        hd.sr.NumContentItem(
            name=codes.fresh(codes.PROBABILITY),
            value=round(float(probability), PROBABILITY_DIGITS),
            unit=codes.fresh(codes.UNIT_PROBABILITY),
            relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
        )
    ])
    return item


def classification_evaluations(classification: Classification) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations" container of one classification (see module doc)."""
    container = hd.sr.ContainerContentItem(
        name=codes.fresh(codes.QUALITATIVE_EVALUATIONS),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    verdict = classification.verdict
    decided = verdict is None or verdict.call in ("positive", "negative")

    def presence(name: str) -> hd.sr.CodedConcept:
        if not decided:
            return INDETERMINATE
        return codes.PRESENT if name == classification.label else codes.ABSENT

    items: list[hd.sr.ContentItem] = [
        _class_evaluation(name, probability, presence(name))
        for name, probability in classification.probabilities.items()
    ]
    model = classification.model
    for concept, value in (
        (dicom_codes.DCM.AlgorithmName, model.name),
        (dicom_codes.DCM.AlgorithmVersion, model.version or "unknown"),
    ):
        items.append(
            hd.sr.TextContentItem(
                name=hd.sr.CodedConcept.from_code(concept),
                value=value,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container
