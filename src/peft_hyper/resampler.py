"""An Idefics2-style perceiver resampler in tiny parts: the perceiver of the reference Frames2LoRA hypernetwork.

Learned queries (the latents) read a long context through layers whose keys and values run over
`[context; latents]`, so the latents also attend to each other in every layer. Each layer: RMSNorm on the latents and
(with its own weight) on the context → grouped-query attention → RMSNorm → residual; RMSNorm → SwiGLU → RMSNorm →
residual. A final RMSNorm. Parameter names follow the reference's checkpoint keys (`latents_q`, `layers.<i>.*`,
`layernorm`), so that a converted checkpoint maps onto these modules key for key.

Shapes: context `(B, S, D)` with a boolean mask `(B, S)` (True = real token) → latents `(B, N, D)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """`weight · x / rms(x)`, the normalisation computed in float32 and cast back to the input's dtype (as Idefics2's
    and Llama's), so that it is exact under bf16 autocast too."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class SwiGLU(nn.Module):
    """`down(silu(gate(x)) · up(x))`, no bias: `(…, dim)` → `(…, hidden)` → `(…, out)`."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim if out is None else out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LatentAttention(nn.Module):
    """Queries from the latents `(B, N, D)`; keys and values from `[context; latents]` `(B, S + N, D)`.

    Grouped-query attention: `heads` query heads of `head_dim`, `kv_heads` key/value heads, query head `i` reading
    key/value head `i // (heads / kv_heads)`; scale `1/sqrt(head_dim)`. Padding tokens of the context are masked; the
    latents never are.
    """

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        sources = torch.cat([context, latents], dim=1)  # (B, S + N, D)
        q = self.q_proj(latents).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, N, head_dim)
        k = self.k_proj(sources).unflatten(-1, (self.kv_heads, -1)).transpose(1, 2)  # (B, kv_heads, S + N, head_dim)
        v = self.v_proj(sources).unflatten(-1, (self.kv_heads, -1)).transpose(1, 2)
        attn_mask = None
        if mask is not None:
            latent_mask = mask.new_ones(mask.shape[0], latents.shape[1])
            attn_mask = torch.cat([mask.bool(), latent_mask.bool()], dim=1)[:, None, None, :]  # (B, 1, 1, S + N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).flatten(-2))


class ResamplerLayer(nn.Module):
    """One Idefics2 perceiver layer: normed attention with a post-branch norm, then a normed SwiGLU feed-forward with
    a post-branch norm, each added to the latents."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.input_latents_layernorm = RMSNorm(dim)
        self.input_context_layernorm = RMSNorm(dim)
        self.self_attn = LatentAttention(dim, heads, kv_heads, head_dim)
        self.post_attention_layernorm = RMSNorm(dim)
        self.pre_ff_layernorm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, dim * ff_mult)
        self.post_ff_layernorm = RMSNorm(dim)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.self_attn(self.input_latents_layernorm(latents), self.input_context_layernorm(context), mask)
        latents = latents + self.post_attention_layernorm(attended)
        return latents + self.post_ff_layernorm(self.mlp(self.pre_ff_layernorm(latents)))


class Resampler(nn.Module):
    """`num_latents` learned queries refined by `depth` [`ResamplerLayer`]s over a context, then an RMSNorm.

    Args (keyword-only):
        dim: width of the latents and of the context.
        num_latents: number of learned queries.
        depth: number of layers.
        heads / kv_heads / head_dim: grouped-query attention shape.
        ff_mult: hidden width of the feed-forward, in `dim`s.
    """

    def __init__(
        self, *, dim: int, num_latents: int, depth: int, heads: int, kv_heads: int, head_dim: int, ff_mult: int
    ) -> None:
        super().__init__()
        self.latents_q = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(ResamplerLayer(dim, heads, kv_heads, head_dim, ff_mult) for _ in range(depth))
        self.layernorm = RMSNorm(dim)

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """context `(B, S, D)`, mask `(B, S)` bool or None → latents `(B, num_latents, D)`."""
        latents = self.latents_q.expand(context.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, context, mask)
        return self.layernorm(latents)
