"""A perceiver in one file: learned latent queries read a long token sequence through cross-attention.

Shapes: context `(B, S, D)` with a boolean mask `(B, S)` (True = real token) → latents `(B, N, D)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))


class Attention(nn.Module):
    """Multi-head attention of `x (B, N, D)` over `context (B, S, D)`; pre-norm on both."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross: bool = True) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim) if cross else None
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.norm(x)
        context = x if context is None else self.norm_context(context)
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, len, head_dim)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, S), broadcast over heads and queries
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).flatten(-2))


class PerceiverBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, ff_mult: int, self_attention: bool) -> None:
        super().__init__()
        self.cross_attn = Attention(dim, heads, head_dim, cross=True)
        self.self_attn = Attention(dim, heads, head_dim, cross=False) if self_attention else None
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        latents = latents + self.cross_attn(latents, context, mask)
        if self.self_attn is not None:
            latents = latents + self.self_attn(latents)
        return latents + self.ff(latents)


class Perceiver(nn.Module):
    """`num_latents` learned queries, refined by `depth` blocks of cross-attention (+ optional self-attention) and
    feed-forward over the context."""

    def __init__(
        self,
        dim: int,
        num_latents: int,
        depth: int,
        heads: int = 8,
        head_dim: int = 64,
        ff_mult: int = 4,
        self_attention: bool = False,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * dim**-0.5)
        self.blocks = nn.ModuleList(
            PerceiverBlock(dim, heads, head_dim, ff_mult, self_attention) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim)

    def forward(
        self, context: torch.Tensor, mask: torch.Tensor | None = None, latent_offset: torch.Tensor | None = None
    ) -> torch.Tensor:
        """context `(B, S, D)`, mask `(B, S)` bool, latent_offset `(B, D)` added to every query → `(B, N, D)`."""
        latents = self.latents.expand(context.shape[0], -1, -1)
        if latent_offset is not None:
            latents = latents + latent_offset[:, None, :]
        for block in self.blocks:
            latents = block(latents, context, mask)
        return self.norm_out(latents)
