"""Weak (multiple-instance) supervision of DeCoVNet's COVID-class activation on real studies.

The real studies carry slice-level infection labels only. On DeCoVNet's feature grid
(``cam = w . F``, the linearised CAM the localizer reads, taken as a logit per cell):

- every cell of a time row whose slices are all labelled clean (and every row of a study that is
  not COVID-19) is pushed to zero activation, except cells holding an inserted lesion;
- every cell holding an inserted COVID-like lesion is pushed up (its covered share is the
  target), as in ``train_decovnet.lesion_cam_loss``;
- every row that holds an infection-labelled slice must fire *somewhere*: the mean of its top-k
  cells inside the lung is pushed up (multiple-instance pooling), the rest of the row is free.

Negatives and positives weigh half each, since findings fill a small share of the grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIL_TOP_K = 3  # cells per labelled row whose mean must fire


def grid_rows(slice_label: torch.Tensor, n_rows: int, value: int) -> torch.Tensor:
    """Feature-grid time rows holding at least one slice whose label equals ``value``."""
    hit = (slice_label == value).float()[None, None]
    return F.adaptive_max_pool1d(hit, n_rows)[0, 0] > 0


def mil_cam_loss(
    cam: torch.Tensor,
    fire_rows: torch.Tensor,
    lesion_share: torch.Tensor,
    lung_cells: torch.Tensor,
    top_k: int = MIL_TOP_K,
    quiet_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weak-label loss of one volume on its CAM logits ``cam`` (T x H x W).

    ``fire_rows`` (T, bool): rows that must fire somewhere; ``lesion_share`` (T x H x W): share
    of each cell covered by an inserted COVID-like lesion (0 where none); ``lung_cells``
    (T x H x W, bool): cells overlapping the lung, where a labelled row's activation is sought;
    ``quiet_rows`` (T, bool): rows that must stay at zero (default: every row not in
    ``fire_rows``; rows in neither are free).
    """
    nt, nh, nw = (int(n) for n in cam.shape)
    if fire_rows.shape != (nt,) or lesion_share.shape != cam.shape:
        raise ValueError("fire_rows must be (T,) and lesion_share the CAM's shape")
    per_cell = F.binary_cross_entropy_with_logits(cam, lesion_share, reduction="none")
    positive_cell = lesion_share > 0
    quiet = ~fire_rows if quiet_rows is None else quiet_rows & ~fire_rows
    negative_cell = ~positive_cell & quiet[:, None, None].expand(nt, nh, nw)
    pos_terms = [per_cell[positive_cell]]
    if bool(fire_rows.any()):
        rows = cam[fire_rows].reshape(int(fire_rows.sum()), -1)
        inside = lung_cells[fire_rows].reshape(rows.shape)
        masked = rows.masked_fill(~inside, float("-inf"))
        # a row without lung cells is sought over the whole row
        masked = torch.where(inside.any(dim=1, keepdim=True), masked, rows)
        k = min(top_k, rows.shape[1])
        pooled = masked.topk(k, dim=1).values.mean(dim=1)
        pos_terms.append(F.binary_cross_entropy_with_logits(
            pooled, torch.ones_like(pooled), reduction="none"))
    positives = torch.cat(pos_terms)
    negatives = per_cell[negative_cell]
    parts = [t.mean() for t in (negatives, positives) if t.numel() > 0]
    return torch.stack(parts).mean()


def real_cam_loss(
    cam: torch.Tensor, slice_label: torch.Tensor, lesion: torch.Tensor, lung: torch.Tensor,
    must_fire: int = 1,
    must_stay_zero: int = 0,
) -> torch.Tensor:
    """:func:`mil_cam_loss` from crop-space labels: ``slice_label`` (T_crop: ``must_fire``,
    ``must_stay_zero``, anything else free), ``lesion`` and ``lung`` (T_crop x H x W, 0/1)
    pooled to the CAM's grid. A grid row stays quiet only if all its slices must."""
    nt, nh, nw = (int(n) for n in cam.shape)
    share = F.adaptive_avg_pool3d(lesion[None, None].float(), (nt, nh, nw))[0, 0]
    lung_cells = F.adaptive_max_pool3d(lung[None, None].float(), (nt, nh, nw))[0, 0] > 0
    fire = grid_rows(slice_label, nt, must_fire)
    quiet = ~F.adaptive_max_pool1d((slice_label != must_stay_zero).float()[None, None],
                                   nt)[0, 0].bool()
    return mil_cam_loss(cam, fire, share.to(cam.dtype), lung_cells, quiet_rows=quiet)
