"""Hounsfield-unit constants of the synthetic tissues (typical adult chest CT values)."""

AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 40.0
SOFT_TISSUE_HU = 35.0
BLOOD_HU = 40.0
LUNG_PARENCHYMA_HU = -850.0
CANCELLOUS_BONE_HU = 300.0
CORTICAL_BONE_HU = 900.0
GGO_HU_RANGE = (-700.0, -400.0)
CONSOLIDATION_HU_RANGE = (-100.0, 50.0)
MASS_HU_RANGE = (20.0, 50.0)
