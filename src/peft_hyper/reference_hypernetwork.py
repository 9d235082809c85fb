"""Stage 4, `architecture="frames2lora"`: the reference Frames2LoRA hypernetwork, built from our own small parts.

Per decoder layer `l`, from the states entering it `(B, S, h)`:

1. context: SwiGLU `h → 4h → d` (no norm, no position signal, no layer signal: layers never mix);
2. encoder: `N` learned queries, `num_blocks` Idefics2-style layers over `[context; latents]` → `(B, N, d)`;
3. rank slots: a one-layer decoder whose `M·r` queries read `[N latents; themselves]` → `(B, M·r, d)`; slot
   `m·r + j` is rank `j` of target kind `m` (kinds ordered by module name, as the reference orders them);
4. a residual MLP (`x + LN(W₂ SiLU(W₁ LN(x)))`), then L2 normalisation of each slot;
5. the head of layer `l`, no bias: `(r, d) → (r, in + out)` per kind; columns `[0, in)` are A `(r, in)`, the next
   `out` are B, stored as rows `(r, out)`; A and B times learned scales per (layer, rank);
6. the input-independent bias block (`bias_a (r_b, in)`, `bias_b (r_b, out)`) appended along rank.

The reference applies its adapters as `lora_alpha · (x Aᵀ) B` with `lora_alpha = 2·r^1.5` (alpha itself, not
alpha/r). Exported adapters have PEFT scaling 1 (`lora.py`), so B carries that factor: ΔW = 2·r^1.5 · Bᵀ A exactly.

The interface is `HyperNetwork`'s (`targets`, `layers`, `generate_for_layer`, `bias_factors`), so the tuner, export,
loading, hotswap, training and evaluation are the same code for both architectures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import HyperLoraConfig
from .hypernetwork import LoraTarget
from .resampler import Resampler, SwiGLU


def reference_kind_order(kinds: set[str] | list[str]) -> list[str]:
    """Target kinds in the reference's order: sorted by module name (`down_proj` < `o_proj` < `up_proj`), which
    fixes the order of the rank slots and of the kinds in the head."""
    return sorted(kinds, key=lambda kind: (kind.rsplit(".", 1)[-1], kind))


def reference_lora_scaling(rank: int) -> float:
    """The reference's `lora_alpha = 2·r^1.5`, by which it multiplies every adapter's output (not by alpha/r)."""
    return 2 * rank**1.5


class PreHeadBlock(nn.Module):
    """`x + LN(W₂ SiLU(W₁ LN(x)))`: affine LayerNorms (eps 1e-5), linears with bias, `dim → hidden → dim`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm_out(self.down(F.silu(self.up(self.norm_in(x)))))


class ReferenceHyperNetwork(nn.Module):
    """The reference Frames2LoRA hypernetwork (see the module docstring).

    Every targeted layer must hold the same target kinds (the reference generates all kinds for all layers from one
    set of rank slots). Parameters: `context_proj`, `encoder`, `decoder`, `pre_head`, `head` `(L, M, d, max(in+out))`
    and, per kind (key `mlp__down_proj` for `mlp.down_proj`), `scale_a`/`scale_b` `(L, r)` and `bias_a` `(L, r_b, in)`,
    `bias_b` `(L, r_b, out)`, where `L` counts the targeted layers in ascending order.
    """

    def __init__(self, config: HyperLoraConfig, hidden_size: int, num_layers: int, targets: list[LoraTarget]) -> None:
        super().__init__()
        if not targets:
            raise ValueError("A hypernetwork needs at least one target module.")
        self.targets = targets
        self.targets_by_layer: dict[int, list[LoraTarget]] = {}
        for target in targets:
            self.targets_by_layer.setdefault(target.layer_idx, []).append(target)
        self.kinds = reference_kind_order({t.kind for t in targets})
        uneven = [layer for layer, of_layer in self.targets_by_layer.items() if len(of_layer) != len(self.kinds)]
        if uneven:
            raise ValueError(
                f"The 'frames2lora' architecture needs every targeted layer to hold the same module kinds "
                f"{self.kinds}; layer {uneven[0]} holds {sorted(t.kind for t in self.targets_by_layer[uneven[0]])}. "
                "Target the same modules in every layer, or use architecture='peft-hyper'."
            )
        self.slot_of_layer = {layer: slot for slot, layer in enumerate(self.layers)}
        shapes = {t.kind: (t.in_features, t.out_features) for t in targets}
        self.features = [shapes[kind] for kind in self.kinds]  # (in, out) per kind, in head order
        self.rank, self.bias_rank = config.r, config.bias_rank
        self.lora_scaling = reference_lora_scaling(config.r)
        dim, n_layers, n_kinds = config.latent_dim, len(self.layers), len(self.kinds)
        attention = dict(heads=config.num_heads, kv_heads=config.num_key_value_heads, head_dim=config.head_dim)

        self.context_proj = SwiGLU(hidden_size, config.ff_mult * hidden_size, dim)
        self.encoder = Resampler(
            dim=dim, num_latents=config.num_latents, depth=config.num_blocks, ff_mult=config.ff_mult, **attention
        )
        self.decoder = Resampler(dim=dim, num_latents=n_kinds * config.r, depth=1, ff_mult=config.ff_mult, **attention)
        self.pre_head = PreHeadBlock(dim, config.ff_mult * dim)
        head_width = max(d_in + d_out for d_in, d_out in self.features)
        self.head = nn.Parameter(torch.empty(n_layers, n_kinds, dim, head_width))
        self.scale_a, self.scale_b = nn.ParameterDict(), nn.ParameterDict()
        self.bias_a, self.bias_b = nn.ParameterDict(), nn.ParameterDict()
        for kind, (d_in, d_out) in zip(self.kinds, self.features, strict=True):
            key = self._key(kind)
            self.scale_a[key] = nn.Parameter(torch.full((n_layers, config.r), float(config.init_scale_a)))
            self.scale_b[key] = nn.Parameter(torch.full((n_layers, config.r), float(config.init_scale_b)))
            self.bias_a[key] = nn.Parameter(torch.empty(n_layers, config.bias_rank, d_in))
            self.bias_b[key] = nn.Parameter(torch.zeros(n_layers, config.bias_rank, d_out))
        self._init_weights(head_width)

    @torch.no_grad()
    def _init_weights(self, head_width: int) -> None:
        """The reference's initialisation: perceiver linears N(0, 0.02) (Idefics2's), learned queries N(0, 1), the
        head N(0, 0.5/sqrt(d + max(in+out)·r)), bias A N(0, 0.2/sqrt(in·r)), bias B 0 (so ΔW = 0 at step 0 with
        `init_scale_b = 0`); the pre-head block keeps PyTorch's defaults."""
        for part in (self.context_proj, self.encoder, self.decoder):
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
        dim = self.head.shape[2]
        nn.init.normal_(self.head, std=0.5 / math.sqrt(dim + head_width * self.rank))
        for (d_in, _), kind in zip(self.features, self.kinds, strict=True):
            nn.init.normal_(self.bias_a[self._key(kind)], std=0.2 / math.sqrt(d_in * self.rank))

    @staticmethod
    def _key(kind: str) -> str:
        return kind.replace(".", "__")

    @property
    def layers(self) -> list[int]:
        """Decoder layers whose input states are needed, ascending."""
        return sorted(self.targets_by_layer)

    def rank_slots(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden_states `(B, S, hidden)` entering one layer, mask `(B, S)` bool → unit rank slots `(B, M, r, d)`."""
        context = self.context_proj(hidden_states.to(self.head.dtype))  # (B, S, d)
        latents = self.encoder(context, mask)  # (B, N, d)
        slots = self.pre_head(self.decoder(latents))  # (B, M·r, d)
        return F.normalize(slots, dim=-1).unflatten(1, (len(self.kinds), self.rank))

    def generate_for_layer(
        self, hidden_states: torch.Tensor, mask: torch.Tensor, layer_idx: int
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """LoRA factors for every target in layer `layer_idx`: name → (A `(B, r + r_b, in)`, B `(B, out, r + r_b)`)."""
        slot = self.slot_of_layer[layer_idx]
        rows = torch.einsum("bmrd,mde->bmre", self.rank_slots(hidden_states, mask), self.head[slot])
        factors = {}
        for index, (kind, (d_in, d_out)) in enumerate(zip(self.kinds, self.features, strict=True)):
            key, batch = self._key(kind), rows.shape[0]
            lora_a = rows[:, index, :, :d_in] * self.scale_a[key][slot][:, None]  # (B, r, in)
            lora_b = rows[:, index, :, d_in : d_in + d_out] * self.scale_b[key][slot][:, None]  # (B, r, out)
            lora_a = torch.cat([lora_a, self.bias_a[key][slot].expand(batch, -1, -1)], dim=1)
            lora_b = torch.cat([lora_b, self.bias_b[key][slot].expand(batch, -1, -1)], dim=1)
            factors[kind] = (lora_a, (lora_b * self.lora_scaling).transpose(1, 2))
        return {target.name: factors[target.kind] for target in self.targets_by_layer[layer_idx]}

    def bias_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The adapter with only the input-independent (bias) block: the 'zero-context' negative control.
        A `(1, r + r_b, in)`, B `(1, out, r + r_b)`, the video-dependent ranks zero."""
        factors = {}
        for target in self.targets:
            slot, key = self.slot_of_layer[target.layer_idx], self._key(target.kind)
            bias_a, bias_b = self.bias_a[key][slot], self.bias_b[key][slot]
            lora_a = torch.cat([bias_a.new_zeros(self.rank, bias_a.shape[1]), bias_a], dim=0)
            lora_b = torch.cat([bias_b.new_zeros(self.rank, bias_b.shape[1]), bias_b], dim=0)
            factors[target.name] = (lora_a[None], (lora_b * self.lora_scaling).T[None])
        return factors
