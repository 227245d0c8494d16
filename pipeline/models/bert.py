"""BERT temporal pooling of the 3D-CNN-BERT classifier (models.md §2.5, "BERT5").

One pre-norm transformer layer over the backbone's temporal tokens with a learned CLS token and a
learned positional embedding; the CLS output is the scan-set embedding. Device-agnostic: every
tensor it creates follows the input's device.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BERT_HIDDEN = 512
BERT_TOKENS = 4  # temporal positions after the backbone (32 frames / 8)
BERT_LAYERS = 1
BERT_HEADS = 8
BERT_FFN_FACTOR = 4
BERT_DROPOUT = 0.1
BERT_TOKEN_KEEP_PROB = 0.8  # training-only Bernoulli keep mask on the input tokens
BERT_INIT_STD = 0.02
LAYER_NORM_EPS = 1e-6
MASKED_SCORE = -1e9


class StdLayerNorm(nn.Module):
    """gamma * (x - mean) / (unbiased std + eps) + beta, the LayerNorm of the original BERT port."""

    def __init__(self, features: int, eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        std = x.std(dim=-1, keepdim=True, unbiased=True)
        return self.gamma * (x - mean) / (std + self.eps) + self.beta


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``heads`` heads with an optional key mask."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.d_k = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_keep: torch.Tensor | None = None) -> torch.Tensor:
        n, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, self.heads, self.d_k).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)
        if key_keep is not None:
            scores = scores.masked_fill(~key_keep[:, None, None, :], MASKED_SCORE)
        attn = self.dropout(torch.softmax(scores, dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(n, t, self.heads * self.d_k)
        return self.output(out)


class FeedForward(nn.Sequential):
    """Linear, tanh-approximated GELU, dropout, linear."""

    def __init__(self, hidden: int, inner: int, dropout: float):
        super().__init__(
            nn.Linear(hidden, inner),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(inner, hidden),
        )


class TransformerBlock(nn.Module):
    """Pre-norm block: x + drop(attn(LN(x))), then x + drop(ffn(LN(x))), then dropout."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.norm_attn = StdLayerNorm(hidden)
        self.attention = MultiHeadAttention(hidden, heads, dropout)
        self.norm_ffn = StdLayerNorm(hidden)
        self.ffn = FeedForward(hidden, BERT_FFN_FACTOR * hidden, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_keep: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm_attn(x), key_keep))
        x = x + self.dropout(self.ffn(self.norm_ffn(x)))
        return self.dropout(x)


class BERT5(nn.Module):
    """CLS + ``max_len`` tokens -> transformer -> (N x (max_len+1) x hidden) sequence output."""

    def __init__(
        self,
        hidden: int = BERT_HIDDEN,
        max_len: int = BERT_TOKENS,
        layers: int = BERT_LAYERS,
        heads: int = BERT_HEADS,
        dropout: float = BERT_DROPOUT,
        token_keep_prob: float = BERT_TOKEN_KEEP_PROB,
    ):
        super().__init__()
        if not 0.0 < token_keep_prob <= 1.0:
            raise ValueError(f"token_keep_prob must be in (0, 1], got {token_keep_prob}")
        self.hidden = hidden
        self.max_len = max_len
        self.token_keep_prob = token_keep_prob
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position = nn.Parameter(torch.zeros(1, max_len + 1, hidden))
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, dropout) for _ in range(layers))
        nn.init.normal_(self.cls_token, std=BERT_INIT_STD)
        nn.init.normal_(self.position, std=BERT_INIT_STD)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t, d = tokens.shape
        if t != self.max_len or d != self.hidden:
            raise ValueError(
                f"expected N x {self.max_len} x {self.hidden}, got {tuple(tokens.shape)}"
            )
        x = torch.cat([self.cls_token.expand(n, -1, -1), tokens], dim=1) + self.position
        x = self.embed_dropout(x)
        key_keep: torch.Tensor | None = None
        if self.training and self.token_keep_prob < 1.0:
            keep = torch.rand(n, t, device=tokens.device) < self.token_keep_prob
            cls_keep = torch.ones(n, 1, dtype=torch.bool, device=tokens.device)
            key_keep = torch.cat([cls_keep, keep], dim=1)
        for block in self.blocks:
            x = block(x, key_keep)
        return x
