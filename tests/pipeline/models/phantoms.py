"""Small synthetic chest volumes and hand-built networks for the model and stage tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from pipeline.models.registry import export_weights
from pipeline.models.unet2d import UNet2D
from pipeline.preprocessing import WINDOW_HU_MAX, WINDOW_HU_MIN
from pipeline.types import CTVolume

BODY_HU = 40.0
LUNG_HU = -850.0
AIR_HU = -1000.0
VESSEL_HU = 40.0
LESION_HU = -650.0  # mean of the inserted ground-glass lesion (noisy: half aerated)
LESION_NOISE_HU = 180.0
NOISE_HU = 15.0
THRESHOLD_HU = -570.0  # the hand-built U-Net calls darker voxels lung


@dataclass(frozen=True)
class Phantom:
    volume: CTVolume
    left: npt.NDArray[np.bool_]
    right: npt.NDArray[np.bool_]
    lesion: npt.NDArray[np.bool_]
    lesion_centre_zyx: tuple[int, int, int]


def _ellipsoid(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]):
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (
        ((zz - centre[0]) / radii[0]) ** 2
        + ((yy - centre[1]) / radii[1]) ** 2
        + ((xx - centre[2]) / radii[2]) ** 2
    ) <= 1.0


def make_phantom(
    shape: tuple[int, int, int] = (48, 128, 128),
    spacing_mm: tuple[float, float, float] = (2.5, 2.4, 2.4),
    joined: bool = False,
    lesion: bool = True,
    seed: int = 0,
) -> Phantom:
    """A chest-like volume: body ellipse, two lung ellipsoids (patient left at high x),
    a few vessels, optionally a noisy ground-glass lesion in the right lung."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    yy, xx = np.ogrid[:ny, :nx]
    body2d = ((yy - ny / 2) / (0.40 * ny)) ** 2 + ((xx - nx / 2) / (0.46 * nx)) ** 2 <= 1.0
    hu[:, body2d] = BODY_HU
    cz, cy = nz / 2, ny / 2
    rz, ry, rx = 0.38 * nz, 0.25 * ny, 0.13 * nx
    gap = 0.02 * nx if joined else 0.09 * nx
    right = _ellipsoid(shape, (cz, cy, nx / 2 - gap - rx), (rz, ry, rx))
    left = _ellipsoid(shape, (cz, cy, nx / 2 + gap + rx), (rz, ry, rx))
    if joined:  # an anterior bridge joins the lungs
        bridge = _ellipsoid(shape, (cz, cy - 0.6 * ry, nx / 2), (0.6 * rz, 0.12 * ry, gap + 3))
        left = left | (bridge & (xx >= nx // 2)[None])
        right = right | (bridge & (xx < nx // 2)[None])
    hu[left | right] = LUNG_HU
    for _ in range(6):  # vessels: small dense spheres inside the lungs
        side = left if rng.uniform() < 0.5 else right
        zs, ys, xs = np.nonzero(side)
        i = int(rng.integers(zs.size))
        hu[_ellipsoid(shape, (zs[i], ys[i], xs[i]), (1.2, 1.5, 1.5)) & side] = VESSEL_HU
    centre = (int(cz), int(cy), int(nx / 2 - gap - rx))
    les = np.zeros(shape, dtype=bool)
    if lesion:
        les = _ellipsoid(shape, centre, (5.0, 9.0, 7.0)) & right
        hu[les] = LESION_HU + LESION_NOISE_HU * rng.standard_normal(int(les.sum()))
    hu += NOISE_HU * rng.standard_normal(shape).astype(np.float32)
    volume = CTVolume(
        hu=hu.astype(np.float32),
        spacing_mm=spacing_mm,
        origin_lps=(-150.0, -150.0, -300.0),
        direction=np.eye(3),
        datasets=(),
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        frame_of_reference_uid="1.2.3.5",
    )
    return Phantom(volume, left, right, les, centre)


def threshold_unet(threshold_hu: float = THRESHOLD_HU, gain: float = 200.0) -> UNet2D:
    """A U-Net whose weights make it a threshold: lung where the windowed input is dark.

    Channel 0 of the first double convolution carries relu(t - x); only that channel is passed
    through the skip of the last up block to the output, all other paths are zero.
    """
    net = UNet2D().eval()
    t = (threshold_hu - WINDOW_HU_MIN) / (WINDOW_HU_MAX - WINDOW_HU_MIN)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
        sd = net.state_dict()  # tensors share storage with the parameters
        sd["inc.0.weight"][0, 0, 1, 1] = -1.0
        sd["inc.0.bias"][0] = t
        sd["inc.3.weight"][0, 0, 1, 1] = 1.0
        sd["up4.conv.0.weight"][0, 0, 1, 1] = 1.0  # input channel 0 = the skip's channel 0
        sd["up4.conv.3.weight"][0, 0, 1, 1] = 1.0
        sd["outc.weight"][1, 0, 0, 0] = gain
        sd["outc.bias"][1] = -0.02 * gain
    return net


def register_threshold_unet(registry: Path) -> None:
    export_weights(
        threshold_unet(),
        "unet2d-lungs",
        "unet2d",
        version="0.0.1-test",
        card_text="# test U-Net\nHand-set threshold weights.\n",
        class_names=("background", "lung"),
        input_spec={"window_hu": [WINDOW_HU_MIN, WINDOW_HU_MAX], "work_shape_px": [64, 96]},
        registry_dir=registry,
    )
