"""3D-CNN-BERT of Tan & Liu (ICCV-W 2021): R(2+1)D backbone + BERT pooling, and its MLP head.

``CnnBert`` maps one 3 x 32 x 224 x 224 RML slice set to class logits and a CLS embedding
(models.md §2.5). ``CnnBertMlp`` classifies a scan from the max- and mean-pooled embeddings of all
its slice sets (§2.6).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.bert import BERT5, BERT_TOKENS
from pipeline.models.r2plus1d import BLOCKS_BY_DEPTH, R2PLUS1D_BASE_WIDTH, R2Plus1D

CNN_BERT_FRAMES = 32
CNN_BERT_FC_DROPOUT = 0.8
MLP_HIDDEN = (256, 32)
MLP_DROPOUT = 0.5


class CnnBert(nn.Module):
    """Backbone -> spatial average -> temporal tokens -> BERT -> CLS -> dropout -> linear.

    ``forward`` returns (logits N x classes, embedding N x hidden); hidden = 8 * base_width.
    """

    def __init__(
        self,
        depth: int = 34,
        base_width: int = R2PLUS1D_BASE_WIDTH,
        num_classes: int = 2,
        frames: int = CNN_BERT_FRAMES,
    ):
        super().__init__()
        if depth not in BLOCKS_BY_DEPTH:
            raise ValueError(f"depth must be one of {sorted(BLOCKS_BY_DEPTH)}, got {depth}")
        if frames % 8:
            raise ValueError(f"frames must be a multiple of 8, got {frames}")
        self.depth = depth
        self.frames = frames
        self.backbone = R2Plus1D(BLOCKS_BY_DEPTH[depth], base_width=base_width)
        self.embedding_dim = self.backbone.out_channels
        self.pool = nn.AdaptiveAvgPool3d((None, 1, 1))
        self.bert = BERT5(hidden=self.embedding_dim, max_len=frames // 8)
        self.dropout = nn.Dropout(CNN_BERT_FC_DROPOUT)
        self.fc = nn.Linear(self.embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] != self.frames:
            raise ValueError(f"expected N x 3 x {self.frames} x H x W, got {tuple(x.shape)}")
        feats = self.pool(self.backbone(x))  # N x C x T/8 x 1 x 1
        tokens = feats.flatten(2).transpose(1, 2)  # N x T/8 x C
        embedding = self.bert(tokens)[:, 0]
        return self.fc(self.dropout(embedding)), embedding


class CnnBertMlp(nn.Module):
    """Linear -> sigmoid -> dropout, twice, then a linear layer: 2*embedding -> classes."""

    def __init__(self, in_features: int = 2 * 512, num_classes: int = 2):
        super().__init__()
        h1, h2 = MLP_HIDDEN
        self.in_features = in_features
        self.net = nn.Sequential(
            nn.Linear(in_features, h1),
            nn.Sigmoid(),
            nn.Dropout(MLP_DROPOUT),
            nn.Linear(h1, h2),
            nn.Sigmoid(),
            nn.Dropout(MLP_DROPOUT),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pool_set_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    """Concatenate max- and mean-pooling over the S sets of one scan: S x D -> 2D ("both")."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 1:
        raise ValueError(f"expected S x D embeddings with S >= 1, got {tuple(embeddings.shape)}")
    return torch.cat([embeddings.max(dim=0).values, embeddings.mean(dim=0)])


__all__ = ["BERT_TOKENS", "CnnBert", "CnnBertMlp", "pool_set_embeddings"]
