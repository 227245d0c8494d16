"""The papers' training augmentations (models.md §1.3, §1.5, §2.4), on torch tensors.

One random affine per sample (rotation, translation, scale, shear) applied identically to every
slice and channel, and brightness / contrast factors applied to the image channel only. Values
are drawn and rounded the way the original ``Rand_Transforms`` draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; zero disables one."""

    rotation_deg: float = 10.0
    translate_fraction: float = 0.1
    scale_delta: float = 0.2
    shear_deg: float = 10.0
    brightness_delta: float = 0.5
    contrast_delta: float = 0.3
    affine: bool = True


DECOVNET_AUGMENT = AugmentConfig()
UNET_AUGMENT = AugmentConfig(affine=False)  # the U-Net recipe disabled the affine part


def random_affine_theta(
    rng: np.random.Generator, cfg: AugmentConfig, height: int, width: int
) -> torch.Tensor:
    """A 2x3 ``affine_grid`` matrix (output -> input, normalised coordinates) of a random affine.

    Rotation is an integer number of degrees in [-rot, rot], translation up to the given fraction
    of the size, scale 1 + round(U(-d, d), 1), shear an integer number of degrees.
    """
    angle = math.radians(int(rng.integers(-int(cfg.rotation_deg), int(cfg.rotation_deg) + 1)))
    shear = math.radians(int(rng.integers(-int(cfg.shear_deg), int(cfg.shear_deg) + 1)))
    scale = 1.0 + round(float(rng.uniform(-cfg.scale_delta, cfg.scale_delta)), 1)
    tx = float(rng.uniform(-cfg.translate_fraction, cfg.translate_fraction)) * width
    ty = float(rng.uniform(-cfg.translate_fraction, cfg.translate_fraction)) * height
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shr = np.array([[1.0, -math.tan(shear)], [0.0, 1.0]])
    forward = rot @ shr * scale  # pixel coordinates (x, y) about the centre
    inverse = np.linalg.inv(forward)
    d = np.diag([2.0 / width, 2.0 / height])
    d_inv = np.diag([width / 2.0, height / 2.0])
    lin = d @ inverse @ d_inv
    shift = -d @ inverse @ np.array([tx, ty])
    theta = np.concatenate([lin, shift[:, None]], axis=1)
    return torch.tensor(theta, dtype=torch.float32)


def apply_affine(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp every (…, H, W) slice of ``x`` with the same 2x3 ``theta`` (zeros outside)."""
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    grid = F.affine_grid(theta.expand(flat.shape[0], 2, 3).to(x.dtype), list(flat.shape),
                         align_corners=False)
    out = F.grid_sample(flat, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.reshape(shape)


def brightness_contrast(
    image: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig
) -> torch.Tensor:
    """image * b, then (image - mean) * c + mean, clipped to [0, 1] (torchvision semantics)."""
    b = 1.0 + round(float(rng.uniform(-cfg.brightness_delta, cfg.brightness_delta)), 1)
    c = 1.0 + round(float(rng.uniform(-cfg.contrast_delta, cfg.contrast_delta)), 1)
    out = image * b
    mean = out.mean()
    return ((out - mean) * c + mean).clamp_(0.0, 1.0)


def augment_volume(
    x: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig = DECOVNET_AUGMENT
) -> torch.Tensor:
    """Augment one DeCoVNet input C x T x H x W (channel 0 image, the rest masks)."""
    out = x
    if cfg.affine:
        theta = random_affine_theta(rng, cfg, int(x.shape[-2]), int(x.shape[-1]))
        out = apply_affine(out, theta)
    image = brightness_contrast(out[:1], rng, cfg)
    return torch.cat([image, out[1:]], dim=0)


def augment_slices(
    image: torch.Tensor, target: torch.Tensor, rng: np.random.Generator,
    cfg: AugmentConfig = UNET_AUGMENT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch of U-Net slices (N x 1 x H x W images, N x H x W integer labels)."""
    imgs, tgts = [], []
    for i in range(image.shape[0]):
        img, tgt = image[i], target[i]
        if cfg.affine:
            theta = random_affine_theta(rng, cfg, int(img.shape[-2]), int(img.shape[-1]))
            img = apply_affine(img, theta)
            tgt = apply_affine(tgt[None].float(), theta, mode="nearest")[0].long()
        imgs.append(brightness_contrast(img, rng, cfg))
        tgts.append(tgt)
    return torch.stack(imgs), torch.stack(tgts)
