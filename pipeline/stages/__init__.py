"""Pipeline stages. Each stage loads its model once, picks its device once, exposes one method.

The runner (``pipeline.runner``) depends only on these protocols, so stages can be swapped by
configuration (morphological or U-Net lungs; DeCoVNet or CNN-BERT classifier).
"""

from __future__ import annotations

from typing import Protocol

from pipeline.types import Classification, CTVolume, Lesion, LungMask, ModelInfo


class LungSegmenter(Protocol):
    """Segments the lungs and separates left from right."""

    @property
    def info(self) -> ModelInfo: ...

    def segment(self, volume: CTVolume) -> LungMask: ...


class Classifier(Protocol):
    """Classifies a CT volume (COVID-19 pneumonia vs the other configured classes)."""

    @property
    def info(self) -> ModelInfo: ...

    def classify(self, volume: CTVolume, lungs: LungMask) -> Classification: ...


class LesionLocalizer(Protocol):
    """Finds lesion regions, using the classifier's activation map where there is one.

    Without a classification (classifier "none") or without an activation map, a localizer
    falls back to a weight-free method and says so in its documentation.
    """

    @property
    def info(self) -> ModelInfo: ...

    def localize(
        self, volume: CTVolume, lungs: LungMask, classification: Classification | None
    ) -> tuple[Lesion, ...]: ...
