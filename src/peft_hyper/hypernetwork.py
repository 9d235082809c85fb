"""Stage 4 of the data flow: per-layer VLM hidden states → perceiver latents → LoRA A and B for that layer's targets.

One perceiver is shared by all decoder layers (a learned layer embedding tells it which layer it reads); each
(layer, module) target has its own linear head that turns every rank slot's latent into an A row and a B column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import HyperLoraConfig
from .perceiver import Perceiver


@dataclass(frozen=True)
class LoraTarget:
    """A base-model linear layer that receives a generated adapter.

    Attributes:
        name: module path in the base model, e.g. `model.text_model.layers.3.mlp.down_proj`.
        layer_idx: index of the decoder layer it sits in; the states entering that layer shape its adapter.
        kind: module path inside the layer, e.g. `mlp.down_proj`; targets of one kind share a head shape.
        in_features / out_features: the layer's shape.
    """

    name: str
    layer_idx: int
    kind: str
    in_features: int
    out_features: int


class TargetHeads(nn.Module):
    """Heads and learned scales for all targets of one kind.

    Shapes: latents `(B, N, latent)` of one layer → A `(B, r + bias_rank, in)`, B `(B, out, r + bias_rank)`.
    """

    def __init__(self, config: HyperLoraConfig, layers: list[int], in_features: int, out_features: int) -> None:
        super().__init__()
        n, rank, latent = len(layers), config.r, config.latent_dim
        self.layers = layers
        self.in_features, self.out_features = in_features, out_features
        self.slot_of_layer = {layer: slot for slot, layer in enumerate(layers)}
        self.to_rank = nn.Linear(config.num_latents, rank)  # mixes the N latents into r rank slots
        weight = torch.empty(n, latent, in_features + out_features)
        nn.init.normal_(weight[..., :in_features], std=in_features**-0.5)
        nn.init.normal_(weight[..., in_features:], std=rank**-0.5)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(n, in_features + out_features))
        self.scale_a = nn.Parameter(torch.full((n,), float(config.init_scale_a)))
        self.scale_b = nn.Parameter(torch.full((n,), float(config.init_scale_b)))
        bias_a = torch.empty(n, config.bias_rank, in_features)
        for block in bias_a:  # same init as PEFT's LoRA A
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        self.bias_block_a = nn.Parameter(bias_a)
        self.bias_block_b = nn.Parameter(torch.zeros(n, out_features, config.bias_rank))

    def bias_block(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The input-independent part alone, padded with zero rows for the video-dependent ranks:
        A `(1, r_total, in)`, B `(1, out, r_total)`."""
        slot = self.slot_of_layer[layer_idx]
        bias_a, bias_b = self.bias_block_a[slot], self.bias_block_b[slot]
        rank = self.to_rank.out_features
        lora_a = torch.cat([bias_a.new_zeros(rank, self.in_features), bias_a], dim=0)
        lora_b = torch.cat([bias_b.new_zeros(self.out_features, rank), bias_b], dim=1)
        return lora_a[None], lora_b[None]

    def forward(self, latents: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        slot = self.slot_of_layer[layer_idx]
        rank_latents = self.to_rank(latents.transpose(1, 2)).transpose(1, 2)  # (B, r, latent)
        rank_latents = F.normalize(rank_latents, dim=-1)
        rows = rank_latents @ self.weight[slot] + self.bias[slot]  # (B, r, in + out)
        lora_a = rows[..., : self.in_features] * self.scale_a[slot]  # (B, r, in)
        lora_b = rows[..., self.in_features :].transpose(1, 2) * self.scale_b[slot]  # (B, out, r)
        batch = latents.shape[0]
        bias_a = self.bias_block_a[slot].expand(batch, -1, -1)
        bias_b = self.bias_block_b[slot].expand(batch, -1, -1)
        return torch.cat([lora_a, bias_a], dim=1), torch.cat([lora_b, bias_b], dim=2)


def position_features(mask: torch.Tensor, num_features: int) -> torch.Tensor:
    """Sinusoidal features of each token's normalised position among the real tokens.

    mask `(B, S)` bool → `(B, S, num_features)`; position 0 is the first real token, 1 the last.
    """
    order = mask.long().cumsum(dim=1) - 1
    count = mask.sum(dim=1, keepdim=True).clamp(min=2) - 1
    position = (order.clamp(min=0) / count).to(torch.float32)  # (B, S) in [0, 1]
    frequencies = torch.pi * 2.0 ** torch.arange(num_features // 2, device=mask.device, dtype=torch.float32)
    angles = position[..., None] * frequencies  # (B, S, F/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def second_features(seconds: torch.Tensor, num_features: int) -> torch.Tensor:
    """Sinusoidal features of times in seconds: `(T,)` → `(T, num_features)`, sin then cos.

    Periods run geometrically from 2 s to 4,096 s, so that one second apart and an hour apart are both told apart.
    """
    count = num_features // 2
    periods = 2.0 * 2048.0 ** (torch.arange(count, device=seconds.device, dtype=torch.float32) / (count - 1))
    angles = seconds.to(torch.float32)[:, None] * (2 * torch.pi / periods)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def time_features(time_spans: torch.Tensor, num_features: int) -> torch.Tensor:
    """Sinusoidal features of each video's time span: `(B, 2)` first and last frame times in seconds →
    `(B, num_features)`, `second_features` of each end."""
    return second_features(time_spans.reshape(-1), num_features // 2).reshape(time_spans.shape[0], -1)


class HyperNetwork(nn.Module):
    """The Frames2LoRA hypernetwork.

    Call `generate_for_layer` once per decoder layer with the states entering that layer, so that a caller can stream
    layers and never hold all of them (the reference stacks every layer's states at once).
    """

    num_position_features = 32
    num_time_features = 32

    def __init__(self, config: HyperLoraConfig, hidden_size: int, num_layers: int, targets: list[LoraTarget]) -> None:
        super().__init__()
        if not targets:
            raise ValueError("A hypernetwork needs at least one target module.")
        self.targets = targets
        self.context_norm = nn.RMSNorm(hidden_size)
        self.context_proj = nn.Linear(hidden_size, config.latent_dim)
        self.position_proj = (
            nn.Linear(self.num_position_features, config.latent_dim) if config.position_encoding else None
        )
        self.time_proj = None
        if config.time_encoding:
            self.time_proj = nn.Linear(self.num_time_features, config.latent_dim)
            nn.init.zeros_(self.time_proj.weight)  # no time signal at first: continuing a trained hypernetwork
            nn.init.zeros_(self.time_proj.bias)  # with it starts from the adapters it generated
        self.layer_embedding = nn.Embedding(num_layers, config.latent_dim)
        self.perceiver = Perceiver(
            dim=config.latent_dim,
            num_latents=config.num_latents,
            depth=config.num_blocks,
            heads=config.num_heads,
            head_dim=config.head_dim,
            ff_mult=config.ff_mult,
            self_attention=config.latent_self_attention,
        )
        kinds = sorted({t.kind for t in targets})
        self.heads = nn.ModuleDict()
        for kind in kinds:
            of_kind = [t for t in targets if t.kind == kind]
            self.heads[self._head_key(kind)] = TargetHeads(
                config, sorted(t.layer_idx for t in of_kind), of_kind[0].in_features, of_kind[0].out_features
            )
        self.targets_by_layer: dict[int, list[LoraTarget]] = {}
        for target in targets:
            self.targets_by_layer.setdefault(target.layer_idx, []).append(target)

    @staticmethod
    def _head_key(kind: str) -> str:
        return kind.replace(".", "__")

    @property
    def layers(self) -> list[int]:
        """Decoder layers whose input states are needed, ascending."""
        return sorted(self.targets_by_layer)

    def encode_layer(
        self, hidden_states: torch.Tensor, mask: torch.Tensor, layer_idx: int, time_spans: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden_states `(B, S, hidden)` entering layer `layer_idx`, mask `(B, S)` bool, time_spans `(B, 2)` seconds
        (needed with `time_encoding`, ignored without) → latents `(B, N, latent)`."""
        param = self.context_proj.weight
        context = self.context_proj(self.context_norm(hidden_states.to(param.dtype)))
        if self.position_proj is not None:
            context = context + self.position_proj(position_features(mask, self.num_position_features).to(param.dtype))
        layer = torch.full((hidden_states.shape[0],), layer_idx, device=param.device, dtype=torch.long)
        offset = self.layer_embedding(layer)
        if self.time_proj is not None:
            if time_spans is None:
                raise ValueError(
                    "This hypernetwork reads each video's time span (time_encoding=True): pass time_spans "
                    "(`inputs.video_time_spans(videos)`)."
                )
            offset = offset + self.time_proj(time_features(time_spans, self.num_time_features).to(param.dtype))
        return self.perceiver(context, mask, latent_offset=offset)

    def generate_for_layer(
        self, hidden_states: torch.Tensor, mask: torch.Tensor, layer_idx: int, time_spans: torch.Tensor | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """LoRA factors for every target in layer `layer_idx`: name → (A `(B, r_total, in)`, B `(B, out, r_total)`);
        `time_spans` as in `encode_layer`."""
        latents = self.encode_layer(hidden_states, mask, layer_idx, time_spans)
        return {
            target.name: self.heads[self._head_key(target.kind)](latents, layer_idx)
            for target in self.targets_by_layer[layer_idx]
        }

    def bias_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The adapter with only the input-independent (bias) block: the 'zero-context' negative control."""
        return {t.name: self.heads[self._head_key(t.kind)].bias_block(t.layer_idx) for t in self.targets}
