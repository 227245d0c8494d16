"""DeCoVNet's class activation map (models.md §1.6), mapped back to the CT volume.

The CAM is linear in the 128-channel s3 features: ``cam = w . F`` where ``w`` multiplies out the
kernel-averaged head convolutions and the two linear layers (``DeCoVNet.cam_weights``). It is
resampled (linear) from the feature grid to the lung box of the volume, passed through a ReLU
and min-max normalised to [0, 1] inside the box; outside the box it is 0. Unlike the original
code it is safe for a constant map (all zeros instead of a division by zero).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from pipeline.preprocessing import CropGeometry


def feature_cam(
    features: torch.Tensor, cam_weights: torch.Tensor, class_index: int
) -> npt.NDArray[np.float32]:
    """The raw CAM on the feature grid: t x h x w, from N=1 x 128 x t x h x w features."""
    if features.ndim != 5 or features.shape[0] != 1:
        raise ValueError(f"expected 1 x C x t x h x w features, got {tuple(features.shape)}")
    if cam_weights.shape[0] != features.shape[1]:
        raise ValueError(
            f"CAM weights for {cam_weights.shape[0]} channels, features have {features.shape[1]}"
        )
    w = cam_weights[:, class_index].to(device=features.device, dtype=features.dtype)
    cam = torch.einsum("c,cthw->thw", w, features[0])
    return cam.float().cpu().numpy()


def normalise_cam(cam: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """ReLU then min-max to [0, 1]; a constant map becomes all zeros."""
    out = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    lo, hi = float(out.min()), float(out.max())
    if hi - lo <= np.finfo(np.float32).tiny:
        return np.zeros_like(out)
    out -= lo
    out *= np.float32(1.0 / (hi - lo))
    return out


def cam_to_volume(cam: npt.NDArray[np.float32], geometry: CropGeometry) -> npt.NDArray[np.float32]:
    """Resample a feature-grid CAM to the volume (lung box), ReLU and min-max it there."""
    box_cam = geometry.to_volume(np.asarray(cam, dtype=np.float32), order=1)
    inner = box_cam[geometry.box.slices]
    box_cam[geometry.box.slices] = normalise_cam(inner)
    return box_cam.astype(np.float32, copy=False)
