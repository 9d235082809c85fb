"""Adapters of non-overlapping video segments composed into one, in rank space.

A generated adapter of a hypernetwork with rank `r` and bias rank `r_b` holds, for each target module, A `(r + r_b,
in)` and B `(out, r + r_b)`: `r` ranks generated from the video, then the input-independent bias block, the same for
every video. The composition of K segments' adapters adds their video-dependent deltas and counts the bias block
once:

    ΔW = Σ_k B_k[:, :r] A_k[:r] + B_bias A_bias

which is one LoRA of rank `K·r + r_b`: the segments' generated ranks concatenated, then the shared bias block. PEFT's
scaling is exactly 1 in our adapters (`lora_alpha = r`), so the concatenation is exact (Doc-to-LoRA's `combine_lora`
does the same). `compose_factors` does the same on a batch of generated factors, with gradients, for training through
composition (`HyperLoraTrainer(segment_frames=...)`).

A plain sum lets ΔW grow with K; a hypernetwork trained through compositions of up to a few segments garbles long
ones. `scaling` (`HyperLoraConfig.segment_scaling`, which training through composition uses too) weighs each
segment's generated ranks by `1` (`"sum"`), `1/√K` (`"sqrt"`: K independent deltas keep the norm of one) or `1/K`
(`"mean"`: the average adapter); the bias block is never scaled. One segment composes to itself under every scaling.

Serving engines cap LoRA rank (vLLM: `max_lora_rank`, at most 512). With `max_rank`, a composed adapter of higher rank is
re-factored through the SVD of its ΔW (thin QR of A and B, then the SVD of the `K·r + r_b` square core, never the
`out × in` matrix): exact when ΔW's rank is at most `max_rank` (for instance when `K·r + r_b` exceeds `min(in, out)`),
the best rank-`max_rank` approximation in Frobenius norm otherwise. `truncation_errors` says what the cap cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .errors import InvalidAdapterError
from .generated_adapters import module_name_of_key
from .lora import lora_state_dict_keys

StateDict = dict[str, torch.Tensor]
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]

SEGMENT_SCALINGS = ("sum", "sqrt", "mean")


def segment_scale(scaling: str, num_segments: int) -> float:
    """The weight of each segment's generated ranks in a composition of `num_segments` segments under `scaling`."""
    if scaling not in SEGMENT_SCALINGS:
        raise InvalidAdapterError(f"Segment scaling must be one of {SEGMENT_SCALINGS}, got {scaling!r}.")
    return {"sum": 1.0, "sqrt": num_segments**-0.5, "mean": 1.0 / num_segments}[scaling]


def compose_adapters(
    adapters: Sequence[Mapping[str, torch.Tensor]],
    max_rank: int | None = None,
    bias_rank: int | None = None,
    scaling: str = "sum",
) -> StateDict:
    """Compose generated adapters of non-overlapping segments into one PEFT LoRA state dict (file keys).

    Args:
        adapters: state dicts from `generate_adapter` of one hypernetwork (same keys and shapes; their last
            `bias_rank` ranks, the bias block, must be identical — that is what shows they come from the same
            hypernetwork).
        max_rank: cap the composed rank (see the module docstring); `None` keeps `K·r + bias_rank`.
        bias_rank: the hypernetwork's bias rank (`HyperLoraConfig.bias_rank`; `HyperLoraModel.compose_adapters`
            passes it). `None` finds it: the trailing ranks that every adapter shares (two or more adapters needed,
            and a hypernetwork without a bias block needs `bias_rank=0`).
        scaling: the weight of each segment's generated ranks, `"sum"`, `"sqrt"` or `"mean"` (see the module
            docstring); use the hypernetwork's `segment_scaling`, as `HyperLoraModel.compose_adapters` does.

    Returns:
        A state dict with A `(R, in)` and B `(out, R)` per module, `R = K·r + bias_rank` or `min(that, max_rank)`;
        load it with `load_generated_adapter`, or save it with a `LoraConfig(r=R, lora_alpha=R)`.
    """
    if bias_rank is None:
        bias_rank = _shared_trailing_rank(adapters)
    _check_parts(adapters, bias_rank)
    _check_max_rank(max_rank)
    composition = Composition(len(adapters), bias_rank, scaling)
    composition.extend(adapters)
    return composition.result(max_rank)


class Composition:
    """`compose_adapters` one part at a time, for parts that are generated one batch after another.

    The composed factors are allocated once, at the first part, for `num_parts` parts; each part's generated ranks
    are copied into their place as it is added, and the part can then be dropped. So what is held is the composed
    adapter (`num_parts · r + bias_rank` ranks) and the part being added — not every part, each with its own copy of
    the bias block, and then their concatenation.

    Args:
        num_parts: how many parts will be added.
        bias_rank: the hypernetwork's bias rank (the parts' last `bias_rank` ranks, identical in all of them).
        scaling: the weight of each part's generated ranks (`segment_scale`), `"sum"` by default.
    """

    def __init__(self, num_parts: int, bias_rank: int, scaling: str = "sum") -> None:
        if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
            raise InvalidAdapterError(f"A composition needs at least one part, got num_parts={num_parts!r}.")
        self.num_parts, self.bias_rank = num_parts, bias_rank
        self.scale = segment_scale(scaling, num_parts)
        self._first: StateDict = {}  # a copy of the first part, which the others are checked against
        self._composed: StateDict = {}
        self._added = 0

    def add(self, part: Mapping[str, torch.Tensor]) -> None:
        """Copy `part`'s generated ranks into the composed factors (checked as `compose_adapters` checks its parts)."""
        if self._added == self.num_parts:
            raise InvalidAdapterError(f"All {self.num_parts} parts of this composition were added already.")
        if self._added == 0:
            _check_parts([part], self.bias_rank)
            self._first = {key: value.clone() for key, value in part.items()}
            self._allocate(part)
        else:
            _check_parts([self._first, part], self.bias_rank)
        for module in _modules(part):
            key_a, key_b = lora_state_dict_keys(module)
            rank = part[key_a].shape[0] - self.bias_rank
            slots = slice(self._added * rank, (self._added + 1) * rank)
            self._composed[key_a][slots] = part[key_a][:rank]
            self._composed[key_b][:, slots] = part[key_b][:, :rank] * self.scale
        self._added += 1

    def extend(self, parts: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """`add` each of `parts` in order (a batch's adapters: they may be views of one batch tensor, which is freed
        when the caller drops the list)."""
        for part in parts:
            self.add(part)

    def result(self, max_rank: int | None = None) -> StateDict:
        """The composed adapter (`max_rank`: capped as in `compose_adapters`), once every part was added."""
        _check_max_rank(max_rank)
        if self._added != self.num_parts:
            raise InvalidAdapterError(f"{self._added} of the composition's {self.num_parts} parts were added.")
        if max_rank is None:
            return dict(self._composed)
        composed: StateDict = {}
        for module in _modules(self._composed):
            key_a, key_b = lora_state_dict_keys(module)
            lora_a, lora_b = self._composed[key_a], self._composed[key_b]
            if lora_a.shape[0] > max_rank:
                lora_a, lora_b, _ = _truncate(lora_a, lora_b, max_rank)
            composed[key_a], composed[key_b] = lora_a.contiguous(), lora_b.contiguous()
        return composed

    def _allocate(self, part: Mapping[str, torch.Tensor]) -> None:
        for module in _modules(part):
            key_a, key_b = lora_state_dict_keys(module)
            lora_a, lora_b = part[key_a], part[key_b]
            rank = lora_a.shape[0] - self.bias_rank
            total = self.num_parts * rank + self.bias_rank
            self._composed[key_a] = lora_a.new_empty((total, lora_a.shape[1]))
            self._composed[key_b] = lora_b.new_empty((lora_b.shape[0], total))
            self._composed[key_a][total - self.bias_rank :] = lora_a[rank:]  # the bias block, once
            self._composed[key_b][:, total - self.bias_rank :] = lora_b[:, rank:]


def _check_max_rank(max_rank: int | None) -> None:
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise InvalidAdapterError(f"max_rank must be a positive integer or None, got {max_rank!r}.")


def compose_factors(
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    segment_video: torch.Tensor,
    bias_rank: int,
    scaling: str = "sum",
) -> Factors:
    """Compose a batch of segments' generated factors per video, differentiably (training through composition).

    Args:
        factors: name → (A `(N, r + bias_rank, in)`, B `(N, out, r + bias_rank)`) for `N` segments, as from
            `HyperLoraModel.generate_lora_factors`.
        segment_video: `(N,)` the video (0 … V-1) of each segment; a video's segments in time order.
        bias_rank: the hypernetwork's bias rank.
        scaling: the weight of each segment's generated ranks, by its video's segment count (`segment_scale`).

    Returns:
        name → (A `(V, R, in)`, B `(V, out, R)`), `R = K·r + bias_rank` for the video with the most segments `K`:
        video `v`'s segments' generated ranks, then zero ranks up to `K·r` (they add nothing: videos of fewer
        segments share the batch's rank), then the bias block once — `compose_adapters` on each video's segments.
    """
    segment_video = segment_video.to(torch.long).cpu()
    num_videos = int(segment_video.max()) + 1
    segments_of = [torch.nonzero(segment_video == v).flatten() for v in range(num_videos)]
    if any(len(index) == 0 for index in segments_of):
        raise ValueError(
            f"Every video 0…{num_videos - 1} needs a segment; got segment_video={segment_video.tolist()}."
        )
    most = max(len(index) for index in segments_of)
    scales = [segment_scale(scaling, len(index)) for index in segments_of]
    composed: Factors = {}
    for name, (lora_a, lora_b) in factors.items():
        rank = lora_a.shape[1] - bias_rank
        parts_a, parts_b = [], []
        for index, scale in zip(segments_of, scales, strict=True):
            index = index.to(lora_a.device)
            pad = (most - len(index)) * rank
            gen_a = lora_a[index, :rank].reshape(-1, lora_a.shape[2])  # (K·r, in), segment-major as compose_adapters
            gen_b = lora_b[index, :, :rank].permute(1, 0, 2).reshape(lora_b.shape[1], -1) * scale  # (out, K·r)
            parts_a.append(torch.cat([gen_a, lora_a.new_zeros(pad, lora_a.shape[2]), lora_a[index[0], rank:]]))
            parts_b.append(torch.cat([gen_b, lora_b.new_zeros(lora_b.shape[1], pad), lora_b[index[0], :, rank:]], 1))
        composed[name] = (torch.stack(parts_a), torch.stack(parts_b))
    return composed


def truncation_errors(adapter: Mapping[str, torch.Tensor], max_rank: int) -> dict[str, float]:
    """For each module, `‖ΔW − ΔW_max_rank‖_F / ‖ΔW‖_F`: what capping `adapter` at `max_rank` loses (0 when exact)."""
    errors = {}
    for module in _modules(adapter):
        key_a, key_b = lora_state_dict_keys(module)
        errors[module] = _truncate(adapter[key_a], adapter[key_b], max_rank)[2]
    return errors


def _truncate(lora_a: torch.Tensor, lora_b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A `(R, in)`, B `(out, R)` → the best rank-`rank` factors of `B @ A` (A `(k, in)`, B `(out, k)`, `k =
    min(rank, R)`, singular values split evenly between them) and the relative Frobenius error."""
    dtype = lora_a.dtype
    q_b, r_b = torch.linalg.qr(lora_b.double())  # (out, R), (R, R)
    q_a, r_a = torch.linalg.qr(lora_a.double().T)  # (in, R), (R, R)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)  # ΔW = q_b u diag(s) vh q_aᵀ
    k = min(rank, s.shape[0])
    root = s[:k].sqrt()
    new_b = (q_b @ u[:, :k]) * root  # (out, k)
    new_a = root[:, None] * (vh[:k] @ q_a.T)  # (k, in)
    total = s.square().sum()
    error = float((s[k:].square().sum() / total).sqrt()) if total > 0 else 0.0
    return new_a.to(dtype), new_b.to(dtype), error


def _shared_trailing_rank(adapters: Sequence[Mapping[str, torch.Tensor]]) -> int:
    """The number of trailing ranks identical in every adapter and module (the bias block), refused when none is."""
    if len(adapters) < 2:
        if not adapters:
            raise InvalidAdapterError("compose_adapters needs at least one adapter.")
        return _rank(adapters[0])  # one adapter: nothing to compose, every rank kept as it is
    shared = _rank(adapters[0])
    for module in _modules(adapters[0]):
        key_a, key_b = lora_state_dict_keys(module)
        a, b = adapters[0][key_a], adapters[0][key_b]
        same = torch.ones(a.shape[0], dtype=torch.bool)
        for part in adapters[1:]:
            same &= (part[key_a] == a).all(dim=1) & (part[key_b] == b).all(dim=0)
        trailing = int(same.flip(0).long().cumprod(0).sum())
        shared = min(shared, trailing)
    if shared == 0:
        raise InvalidAdapterError(
            "The adapters share no bias block (no trailing ranks are identical in all of them): they come from "
            "different hypernetworks, or from one without a bias block — then pass bias_rank=0."
        )
    return shared


def _rank(adapter: Mapping[str, torch.Tensor]) -> int:
    key_a = lora_state_dict_keys(_modules(adapter)[0])[0]
    return adapter[key_a].shape[0]


def _modules(adapter: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({module_name_of_key(key)[0] for key in adapter})


def _check_parts(adapters: Sequence[Mapping[str, torch.Tensor]], bias_rank: int) -> None:
    if not adapters:
        raise InvalidAdapterError("compose_adapters needs at least one adapter.")
    first = adapters[0]
    shapes = {key: tuple(value.shape) for key, value in first.items()}
    for index, part in enumerate(adapters[1:], start=1):
        if {key: tuple(value.shape) for key, value in part.items()} != shapes:
            raise InvalidAdapterError(
                f"Adapter {index} has other modules or shapes than adapter 0: compose adapters generated by one "
                "hypernetwork for one base model."
            )
    for module in _modules(first):
        key_a, key_b = lora_state_dict_keys(module)
        if key_a not in first or key_b not in first:
            raise InvalidAdapterError(f"Module '{module}' lacks its lora_A or lora_B tensor.")
        if not 0 <= bias_rank <= first[key_a].shape[0]:
            raise InvalidAdapterError(
                f"bias_rank {bias_rank} does not fit rank {first[key_a].shape[0]} of '{module}'."
            )
        if bias_rank == 0:
            continue
        rank = first[key_a].shape[0] - bias_rank
        for index, part in enumerate(adapters[1:], start=1):
            same = torch.equal(part[key_a][rank:], first[key_a][rank:]) and torch.equal(
                part[key_b][:, rank:], first[key_b][:, rank:]
            )
            if not same:
                raise InvalidAdapterError(
                    f"Adapter {index}'s bias block (its last {bias_rank} ranks) differs from adapter 0's in '{module}': "
                    "the adapters come from different hypernetworks (or are composed already). Compose adapters "
                    "generated by one hypernetwork."
                )
