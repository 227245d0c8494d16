"""Volume classifiers: DeCoVNet (with its CAM) and 3D-CNN-BERT with the MLP head.

Both load their networks once from the model registry, pick the device once, and run under
``torch.inference_mode()``; both satisfy the ``Classifier`` protocol.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

from pipeline.device import channels_last, select_device
from pipeline.errors import ModelError, PipelineError
from pipeline.models.cnn_bert import CnnBert, pool_set_embeddings
from pipeline.models.decovnet import DeCoVNet
from pipeline.models.registry import ModelSpec, load_model
from pipeline.preprocessing import (
    DECOVNET_CROP_SHAPE_PX,
    WINDOW_HU_MAX,
    WINDOW_HU_MIN,
    decovnet_input,
)
from pipeline.slices import (
    MIN_SPAN_TEST,
    lung_fraction_per_slice,
    rml_set,
    rml_slices,
    select_slice_range,
    sequential_sets,
)
from pipeline.stages.cam import cam_to_volume, feature_cam
from pipeline.stages.verdict import VerdictPolicy, image_statistics, softmax
from pipeline.types import Classification, CTVolume, LungMask, ModelInfo

logger = logging.getLogger(__name__)

DECOVNET_MODEL_NAME = "decovnet"
CNN_BERT_MODEL_NAME = "cnn-bert"
CNN_BERT_MLP_MODEL_NAME = "cnn-bert-mlp"
COVID_CLASS_NAME = "covid19"


def _class_names(spec: ModelSpec, num_classes: int) -> tuple[tuple[str, ...], int]:
    """The registry's class names and the index of the COVID-19 class; ModelError if unusable."""
    names = spec.class_names
    if len(names) != num_classes:
        raise ModelError(
            f"model {spec.name!r} has {num_classes} outputs but {len(names)} class names {names}"
        )
    positive = spec.positive_class or COVID_CLASS_NAME
    if positive not in names:
        raise ModelError(f"model {spec.name!r} has no positive class {positive!r} in {names}")
    return names, names.index(positive)


def _check_window(spec: ModelSpec) -> None:
    lo, hi = spec.input_spec.get("window_hu", (WINDOW_HU_MIN, WINDOW_HU_MAX))
    if (float(lo), float(hi)) != (WINDOW_HU_MIN, WINDOW_HU_MAX):
        raise ModelError(f"model {spec.name!r} expects window {lo}..{hi} HU; not supported")


_ARCHITECTURE_NAMES = {DeCoVNet: "DeCoVNet", CnnBert: "CNN-BERT"}
VolumetricT = TypeVar("VolumetricT", DeCoVNet, CnnBert)


def _load_volumetric(
    kind: type[VolumetricT], name: str, device: torch.device, registry_dir: str | Path | None
) -> tuple[VolumetricT, ModelSpec]:
    """The registry's model ``name`` on ``device``, refused unless it is a ``kind`` reading the
    supported HU window; its weights stored channels-last (3D convolutions on channels-last
    tensors run about 1.5x faster on the CPU)."""
    model, spec = load_model(name, device, registry_dir)
    if not isinstance(model, kind):
        raise ModelError(
            f"model {name!r} is a {spec.architecture}, not a {_ARCHITECTURE_NAMES[kind]}"
        )
    _check_window(spec)
    return channels_last(model, volumetric=True), spec


def _result(
    probs: npt.NDArray[np.float64],
    names: tuple[str, ...],
    positive: int,
    embedding: npt.NDArray[np.float32],
    info: ModelInfo,
    activation: npt.NDArray[np.float32] | None = None,
) -> Classification:
    probabilities = {name: float(p) for name, p in zip(names, probs, strict=True)}
    return Classification(
        label=names[int(np.argmax(probs))],
        probabilities=probabilities,
        p_covid=float(probs[positive]),
        embedding=np.asarray(embedding, dtype=np.float32),
        model=info,
        activation=activation,
    )


class DeCoVNetClassifier:
    """DeCoVNet on the lung box at 1 mm slices and 224 x 336; activation = the COVID-class CAM."""

    def __init__(
        self,
        device: str = "auto",
        model_name: str = DECOVNET_MODEL_NAME,
        registry_dir: str | Path | None = None,
        compute_cam: bool = True,
    ) -> None:
        self._device = select_device(device)
        model, spec = _load_volumetric(DeCoVNet, model_name, self._device, registry_dir)
        self._model, self._spec = model, spec
        self._names, self._positive = _class_names(spec, model.num_classes)
        shape = spec.input_spec.get("crop_shape_px", DECOVNET_CROP_SHAPE_PX)
        self._crop_shape = (int(shape[0]), int(shape[1]))
        self._compute_cam = compute_cam
        self._policy = VerdictPolicy.from_metadata(spec.metadata)
        with torch.no_grad():
            self._cam_weights = model.cam_weights().detach().clone()

    @property
    def info(self) -> ModelInfo:
        return self._spec.info

    def classify(self, volume: CTVolume, lungs: LungMask) -> Classification:
        started = time.perf_counter()
        mask = lungs.both
        if not mask.any():
            raise PipelineError("cannot classify: the lung mask is empty")
        prepared = decovnet_input(volume.hu, mask, volume.spacing_mm[0], self._crop_shape)
        t_pre = time.perf_counter()
        x = torch.from_numpy(prepared.array[None]).to(self._device)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            logits, features, embedding = self._model.forward_with_embedding(x)
            probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy().astype(np.float64)
            cam = (
                feature_cam(features, self._cam_weights, self._positive)
                if self._compute_cam
                else None
            )
        t_net = time.perf_counter()
        activation = cam_to_volume(cam, prepared.geometry) if cam is not None else None
        logger.info(
            "DeCoVNet: T=%d, p(%s)=%.3f; input %.2f s, network %.2f s, CAM %.2f s",
            prepared.array.shape[1],
            self._names[self._positive],
            probs[self._positive],
            t_pre - started,
            t_net - t_pre,
            time.perf_counter() - t_net,
        )
        emb = embedding[0].cpu().numpy()
        verdict = self._policy.judge(
            logits[0].float().cpu().numpy().tolist(), self._positive,
            image_statistics(volume, mask), emb,
        )
        logger.info("verdict: %s", verdict.statement)
        calibrated = softmax(logits[0].float().cpu().numpy().tolist(), self._policy.temperature)
        result = _result(calibrated, self._names, self._positive, emb, self.info, activation)
        return replace(result, verdict=verdict)


class CnnBertClassifier:
    """3D-CNN-BERT: slice range, 32-slice sets, RML input, CLS embeddings, max+mean pool, MLP.

    With ``mlp=None`` the per-set classifier of the CNN-BERT model is used and its softmax
    outputs are averaged over the sets. No activation map is produced.
    """

    def __init__(
        self,
        device: str = "auto",
        backbone: str = CNN_BERT_MODEL_NAME,
        mlp: str | None = CNN_BERT_MLP_MODEL_NAME,
        registry_dir: str | Path | None = None,
        batch_sets: int = 1,
    ) -> None:
        if batch_sets < 1:
            raise ValueError(f"batch_sets must be >= 1, got {batch_sets}")
        self._device = select_device(device)
        model, spec = _load_volumetric(CnnBert, backbone, self._device, registry_dir)
        self._model, self._spec = model, spec
        self._mlp: torch.nn.Module | None = None
        self._mlp_spec: ModelSpec | None = None
        head_spec = spec
        n_out = model.fc.out_features
        if mlp is not None:
            self._mlp, self._mlp_spec = load_model(mlp, self._device, registry_dir)
            head_spec = self._mlp_spec
            last = [m for m in self._mlp.modules() if isinstance(m, torch.nn.Linear)][-1]
            first = [m for m in self._mlp.modules() if isinstance(m, torch.nn.Linear)][0]
            if first.in_features != 2 * model.embedding_dim:
                raise ModelError(
                    f"MLP {mlp!r} takes {first.in_features} features, the backbone gives "
                    f"{2 * model.embedding_dim}"
                )
            n_out = last.out_features
        self._names, self._positive = _class_names(head_spec, n_out)
        self._batch = batch_sets
        self._resize_px = int(spec.input_spec.get("resize_px", 280))
        self._crop_px = int(spec.input_spec.get("size_px", 224))

    @property
    def info(self) -> ModelInfo:
        if self._mlp_spec is None:
            return self._spec.info
        s, m = self._spec, self._mlp_spec
        return ModelInfo(
            name=f"{s.name}+{m.name}",
            version=f"{s.version}+{m.version}",
            sha256=f"{s.sha256}+{m.sha256}",
        )

    def classify(self, volume: CTVolume, lungs: LungMask) -> Classification:
        started = time.perf_counter()
        mask = lungs.both
        if not mask.any():
            raise PipelineError("cannot classify: the lung mask is empty")
        first, stop = select_slice_range(lung_fraction_per_slice(mask), MIN_SPAN_TEST)
        sets = sequential_sets(stop - first, self._model.frames)
        rml = rml_slices(
            volume.hu[first:stop],
            mask[first:stop],
            resize_px=self._resize_px,
            crop_px=self._crop_px,
        )
        embeddings: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(sets), self._batch):
                batch = np.stack([rml_set(rml, s) for s in sets[start : start + self._batch]])
                x = torch.from_numpy(batch).to(self._device)
                out, emb = self._model(x.contiguous(memory_format=torch.channels_last_3d))
                embeddings.append(emb.float())
                logits.append(out.float())
            emb_all = torch.cat(embeddings)
            pooled = pool_set_embeddings(emb_all)
            if self._mlp is not None:
                probs_t = torch.softmax(self._mlp(pooled[None].to(self._device)), dim=1)[0]
            else:
                probs_t = torch.softmax(torch.cat(logits), dim=1).mean(dim=0)
            probs = probs_t.cpu().numpy().astype(np.float64)
        logger.info(
            "CNN-BERT: slices %d-%d, %d set(s), p(%s)=%.3f in %.2f s",
            first,
            stop - 1,
            len(sets),
            self._names[self._positive],
            probs[self._positive],
            time.perf_counter() - started,
        )
        return _result(probs, self._names, self._positive, pooled.cpu().numpy(), self.info)
