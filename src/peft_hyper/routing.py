"""Routing a question to the segment of a long video it is about.

A composed adapter is a sum of its segments' ΔW (`composition.py`), and a sum has no way to switch segments off: the
LoRA delta is linear in a question's hidden state, whichever time the question names. Measured, a composed adapter
answers about *a* segment rather than the one the question names (`docs/long_videos.md`). The
router makes that selection outside the adapters, as PEFT's X-LoRA does with its classifier over the base's hidden
states: it reads the frozen base's states of the question — the text-only prompt every question is asked with, one
prefill, zero visual tokens — and returns, per question, a distribution over the times of the video's frames and the
probability that the question names no particular time. The question is then answered with the adapter of the segment that holds
the most probability (`HyperLoraModel.route`), or with the whole composition when it names no time.

Data flow (Q questions of S tokens, hidden size H, router width D, F = `num_time_features`):

    question states (Q, S, H) ─ Linear ─▶ (Q, S, D) ─ + GELU(Conv1d k=5) ─▶ (Q, S, D)   (digits read with their neighbours)
        ─ attention pooling ─▶ (Q, D) ─ Linear ─▶ time query (Q, F) and no-time logit (Q,)
    p(t | question) = softmax_t(time query · φ(t)) over the times t of the video's sampled frames, φ the sinusoids
    of `hypernetwork.second_features` (periods 2 s to 4,096 s: one second apart and an hour apart are told apart)
    p(segment k | question) = Σ p(t) over segment k's frames

The router is trained on its own (`examples/long_video/train_router.py`), supervised by questions whose time is known;
it does not depend on the hypernetwork's weights, only on the base model it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hypernetwork import second_features

NO_TIME = -1  # the label of a question that names no time (`router_loss`)


@dataclass(frozen=True)
class SegmentedVideo:
    """A video internalized by segments (`HyperLoraModel.internalize_segments`): its segment adapters' names, the
    times of its sampled frames `(T,)` and of each segment's first frame `(K,)`, in seconds."""

    names: tuple[str, ...]
    frame_times: torch.Tensor
    starts: torch.Tensor


@dataclass
class RouterOutput:
    """`time_query` `(Q, num_time_features)`: scores times through `SegmentRouter.time_logits`;
    `no_time_logits` `(Q,)`: the logit that a question names no particular time."""

    time_query: torch.Tensor
    no_time_logits: torch.Tensor


class SegmentRouter(nn.Module):
    """Reads the states `(Q, S, hidden)` of questions entering one decoder layer of the frozen base and says which
    time of the video each is about (see the module docstring)."""

    num_time_features = 32
    kernel_size = 5  # "MM:SS" is five tokens when digits are spelled one by one: a window sees a whole time

    def __init__(self, hidden_size: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, dim)
        self.conv = nn.Conv1d(dim, dim, self.kernel_size, padding=self.kernel_size // 2)
        self.pool = nn.Linear(dim, 1)
        self.head = nn.Linear(dim, self.num_time_features + 1)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> RouterOutput:
        """states `(Q, S, hidden)`, mask `(Q, S)` bool (padding False) → `RouterOutput`."""
        param = self.proj.weight
        tokens = self.proj(self.norm(states.to(param.dtype)))
        tokens = tokens * mask[..., None]  # padding must not leak into its neighbours' windows
        tokens = tokens + F.gelu(self.conv(tokens.transpose(1, 2)).transpose(1, 2))
        weights = self.pool(tokens).squeeze(-1).masked_fill(~mask, torch.finfo(tokens.dtype).min).softmax(dim=-1)
        pooled = torch.einsum("qs,qsd->qd", weights, tokens)
        out = self.head(pooled)
        return RouterOutput(time_query=out[:, :-1], no_time_logits=out[:, -1])

    def time_logits(self, output: RouterOutput, seconds: torch.Tensor) -> torch.Tensor:
        """Logits `(Q, T)` of the questions being about each of the times `seconds` `(T,)`."""
        return output.time_query @ second_features(seconds, self.num_time_features).to(output.time_query.dtype).T

    def segment_probabilities(
        self, output: RouterOutput, frame_times: torch.Tensor, segment_starts: torch.Tensor
    ) -> torch.Tensor:
        """`(Q, K + 1)`: each question's probability of being about each of `K` segments, then in the last column the
        probability that it names no time. The time distribution is over the video's sampled frames, `frame_times`
        `(T,)` seconds; a frame belongs to the last segment that starts at or before it (`segment_starts` `(K,)`,
        ascending)."""
        frame_times = frame_times.to(torch.float32).contiguous()
        starts = segment_starts.to(device=frame_times.device, dtype=torch.float32).contiguous()
        owner = (torch.searchsorted(starts, frame_times, right=True) - 1).clamp(min=0)
        per_frame = self.time_logits(output, frame_times).softmax(dim=-1)  # (Q, T)
        per_segment = per_frame.new_zeros(per_frame.shape[0], len(starts))
        per_segment.index_add_(1, owner, per_frame)
        no_time = output.no_time_logits.sigmoid()[:, None]
        return torch.cat([per_segment * (1 - no_time), no_time], dim=1)


def choose_segments(probabilities: torch.Tensor, no_time_threshold: float = 0.5) -> list[int | None]:
    """The decision rule on `segment_probabilities` `(Q, K + 1)`: per question, the segment with the most probability,
    or `None` (answer with the whole composition) when the probability that it names no time is at least
    `no_time_threshold`."""
    return [None if row[-1] >= no_time_threshold else int(row[:-1].argmax()) for row in probabilities]


def router_loss(
    router: SegmentRouter, output: RouterOutput, cue_times: torch.Tensor, max_seconds: int
) -> torch.Tensor:
    """Training loss of `output` for questions about `cue_times` `(Q,)` whole seconds (`NO_TIME` for a question that
    names none): binary cross-entropy of the no-time logit, plus cross-entropy of the cue second among `[0,
    max_seconds)` for the questions that have one."""
    timed = cue_times != NO_TIME
    loss = F.binary_cross_entropy_with_logits(output.no_time_logits, (~timed).to(output.no_time_logits.dtype))
    if timed.any():
        seconds = torch.arange(max_seconds, device=cue_times.device)
        logits = router.time_logits(RouterOutput(output.time_query[timed], output.no_time_logits[timed]), seconds)
        loss = loss + F.cross_entropy(logits, cue_times[timed])
    return loss
