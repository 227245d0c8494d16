"""Who made a result object: this software, and one Contributing Equipment item per algorithm.

IHE AI Results (AIR) asks that every algorithm that contributed to a result object be listed in
the Contributing Equipment Sequence (0018,A001) with its name, its version and a Device UID that
changes whenever the algorithm changes. Each item here carries:

- Manufacturer: this project; Manufacturer's Model Name: the algorithm's name; Software
  Versions: its version;
- Device UID (0018,1002): derived deterministically from the algorithm's identity. For a trained
  model that is the sha256 checksum of its weights (as the model registry records it), so new
  weights give a new UID and the same weights always the same one; a weight-free algorithm (the
  morphological lung segmentation, the intensity lesion fallback) is identified by its name and
  version instead;
- Purpose of Reference: "Processing Equipment" (DCM 109102, CID 7005), the purpose the standard
  gives to equipment that processed instances to create new ones (CID 7005 has no separate
  "processing algorithm" purpose; DCM 109104 is "De-identifying Equipment");
- Contribution Description: "Processing algorithm: <name> <version>".

highdicom adds the scanner of the source images first ("Acquisition Equipment", when the source
names a manufacturer) and itself last; the algorithm items sit between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from highdicom.base_content import ContributingEquipment

from pipeline import __version__
from pipeline.types import ModelInfo, StudyResult
from pipeline.writers import codes
from pipeline.writers.uids import derive_uid

MANUFACTURER = "chest-ct-dicomnode"
MANUFACTURER_MODEL_NAME = "chest-ct-dicomnode"
DEVICE_SERIAL_NUMBER = "1"
SOFTWARE_VERSIONS = f"chest-ct-dicomnode {__version__}"
ALGORITHM_UID_ROOT = "urn:chest-ct-dicomnode:algorithm"
CONTRIBUTION_PREFIX = "Processing algorithm: "
LO_MAX_CHARS = 64


def algorithm_device_uid(model: ModelInfo) -> str:
    """Device UID of one algorithm: from its weights checksum, or from its name and version when
    it has no weights. The same algorithm always gets the same UID; other weights another one."""
    if model.sha256:
        return derive_uid(ALGORITHM_UID_ROOT, "weights", model.sha256.lower())
    return derive_uid(ALGORITHM_UID_ROOT, "weight-free", model.name, model.version)


def result_models(result: StudyResult) -> list[ModelInfo]:
    """Every algorithm of the result, the classifier's model included, in stage order, once."""
    models = list(result.algorithms)
    if result.classification is not None:
        models.append(result.classification.model)
    return list(dict.fromkeys(models))


def algorithm_equipment(models: Iterable[ModelInfo]) -> list[ContributingEquipment]:
    """One Contributing Equipment item per distinct algorithm, in the given order."""
    items = []
    for model in dict.fromkeys(models):
        item = ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.fresh(codes.PROCESSING_EQUIPMENT),
            manufacturer_model_name=model.name[:LO_MAX_CHARS],
            software_versions=(model.version or "unknown")[:LO_MAX_CHARS],
            contribution_description=f"{CONTRIBUTION_PREFIX}{model.name} {model.version}".strip(),
        )
        item.DeviceUID = algorithm_device_uid(model)
        items.append(item)
    return items


def equipment_for(result: StudyResult, models: Sequence[ModelInfo] | None = None) -> list[
    ContributingEquipment
]:
    """The algorithm items of an object built from ``result`` (all its models by default)."""
    return algorithm_equipment(result_models(result) if models is None else models)
