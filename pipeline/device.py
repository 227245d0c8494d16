"""Choosing the torch device and thread count once, for every model stage of a worker."""

from __future__ import annotations

import logging
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)

logger = logging.getLogger(__name__)

AUTO_DEVICE = "auto"


def select_device(preference: str = AUTO_DEVICE) -> torch.device:
    """Resolve a device preference: "auto" (CUDA when available, else CPU), "cpu", "cuda[:N]".

    Raises ValueError for an unknown string or a CUDA device this machine does not have. On CUDA,
    cuDNN autotuning is switched off and deterministic kernels requested, so repeated analyses of
    a series give the same numbers.
    """
    pref = (preference or AUTO_DEVICE).strip().lower()
    if pref == AUTO_DEVICE:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(pref)
        except RuntimeError as exc:
            raise ValueError(f"unknown torch device {preference!r}") from exc
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"unsupported device type {device.type!r}; use 'cpu' or 'cuda'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {preference!r} requested but CUDA is not available")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {preference!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
        device = torch.device("cuda", index)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        logger.info("using %s (%s)", device, torch.cuda.get_device_name(index))
    else:
        logger.info("using cpu (%d threads)", torch.get_num_threads())
    return device


def configure_threads(threads: int) -> int:
    """Set torch's intra-op thread count when ``threads`` > 0; return the count in effect."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.info("torch intra-op threads set to %d", threads)
    return torch.get_num_threads()


def channels_last(model: ModuleT, volumetric: bool) -> ModuleT:
    """Store the model's 4D (or 5D when ``volumetric``) weights channels-last.

    Convolutions on channels-last tensors run markedly faster on CPU (oneDNN) and on recent
    GPUs; inputs should be converted the same way (``Tensor.contiguous(memory_format=...)``).
    """
    fmt = torch.channels_last_3d if volumetric else torch.channels_last
    return model.to(memory_format=fmt)  # type: ignore[call-overload,no-any-return]
