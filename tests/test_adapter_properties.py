"""Stages 1–6, property-based: whatever `generate_adapter` or `load_generated_adapter` is given, it works or raises a
`PeftHyperError` — and a refused adapter leaves the resident adapters as they were.

`generate_adapter` gets frame tensors of any dtype and (small) shape, PIL lists, bytes, stray objects, and frame
counts / rates that are 0, negative, NaN or of the wrong type. `load_generated_adapter` gets a real generated adapter
mutated by hypothesis: keys dropped, added or renamed, tensors reshaped, recast, made non-finite or replaced by numpy
arrays and lists, and adapter names drawn from any text. Examples are few and the search derandomized.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import small_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from peft import get_peft_model
from PIL import Image
from transformers import SmolVLMForConditionalGeneration

from peft_hyper import PeftHyperError

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def model(tiny_base_dir):
    return get_peft_model(SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir).eval(), small_config())


@pytest.fixture(scope="module")
def adapter(model, clips) -> dict[str, torch.Tensor]:
    return model.generate_adapter(clips[0])


_DTYPES = [torch.uint8, torch.float32, torch.int64, torch.bool]


@st.composite
def _video_inputs(draw) -> Any:
    kind = draw(st.sampled_from(["tensor", "tensor", "tensor", "pil", "bytes", "object", "batch"]))
    if kind == "tensor":
        if draw(st.integers(0, 2)):  # a plausible clip, of any small size
            shape = draw(st.tuples(st.integers(1, 3), st.just(3), st.integers(1, 40), st.integers(1, 40)))
            return torch.randint(0, 256, shape, dtype=torch.uint8)
        shape = draw(st.tuples(st.integers(0, 3), st.sampled_from([1, 3, 4]), st.integers(0, 40), st.integers(0, 40)))
        return torch.randint(0, 256, shape).to(draw(st.sampled_from(_DTYPES)))
    if kind == "pil":
        sizes = st.tuples(st.integers(1, 40), st.integers(1, 40))
        return [
            Image.new(draw(st.sampled_from(["RGB", "L", "RGBA"])), draw(sizes)) for _ in range(draw(st.integers(0, 3)))
        ]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "batch":
        return [torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8) for _ in range(draw(st.integers(0, 2)))]
    return draw(st.sampled_from([None, 3, 2.5, "no/such/video.mp4", {"frames": 1}, object()]))


def _usually(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` four times in five, `odd` (what a caller may pass by mistake) otherwise."""
    return st.integers(0, 4).flatmap(lambda pick: odd if pick == 0 else usual)


_COUNTS = _usually(st.one_of(st.none(), st.integers(1, 6)), st.sampled_from([0, -2, True, 2.5, float("nan"), "4"]))
_RATES = _usually(st.none(), st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e-9, 4.0, "2"]))
_NAMES = _usually(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
    st.one_of(st.text(max_size=12), st.sampled_from(["lora_x", "default", 7, None])),
)


@SETTINGS
@given(video=_video_inputs(), num_frames=_COUNTS, fps=_RATES)
def test_generate_adapter_gives_an_adapter_or_a_typed_error(model, adapter, video, num_frames, fps):
    try:
        result = model.generate_adapter(video, num_frames=num_frames, fps=fps)
    except PeftHyperError as exc:
        event(type(exc).__name__)
        return
    event("generated")
    for state_dict in result if isinstance(result, list) else [result]:
        assert set(state_dict) == set(adapter)
        assert all(state_dict[k].shape == adapter[k].shape and torch.isfinite(state_dict[k]).all() for k in adapter)


def _mutations(adapter: dict[str, torch.Tensor]) -> st.SearchStrategy[Any]:
    keys = sorted(adapter)
    key = st.sampled_from(keys)

    def drop(k):
        return {n: v for n, v in adapter.items() if n != k}

    def reshape(k):
        return {**adapter, k: adapter[k][:-1]}

    def nonfinite(k, value):
        broken = adapter[k].clone()
        broken.view(-1)[0] = value
        return {**adapter, k: broken}

    return st.one_of(
        st.just(adapter),
        key.map(drop),
        key.map(reshape),
        st.tuples(key, st.sampled_from([float("nan"), float("inf")])).map(lambda a: nonfinite(*a)),
        key.map(lambda k: {**adapter, k.replace("lora_A", "lora_C"): adapter[k]}),
        key.map(lambda k: {**adapter, k: adapter[k].numpy()}),
        key.map(lambda k: {**adapter, k: adapter[k].to(torch.int32)}),
        key.map(lambda k: {**adapter, k: adapter[k].tolist()}),
        key.map(lambda k: {**adapter, k: adapter[k].to(torch.float16)}),
        st.just({**adapter, 3: torch.zeros(1)}),
        st.sampled_from([None, [], (), "adapter", {}, torch.zeros(2)]),
    )


@SETTINGS
@given(data=st.data(), name=_NAMES)
def test_load_generated_adapter_loads_or_refuses_and_leaves_the_others(model, adapter, data, name):
    tuner = model.base_model
    if "kept" not in tuner.generated_adapters:
        model.load_generated_adapter(adapter, "kept", activate=False)
    kept = {k: v.clone() for k, v in tuner.adapters.state_dict("kept").items()}
    resident = set(tuner.generated_adapters)
    state_dict = data.draw(_mutations(adapter))
    try:
        model.load_generated_adapter(state_dict, name)
    except PeftHyperError as exc:
        event(type(exc).__name__)
        assert set(tuner.generated_adapters) == resident  # nothing half-loaded
    else:
        event("loaded")
        assert name in tuner.generated_adapters
        model.delete_adapter(name) if name != "kept" else None
    if name != "kept":
        for key, value in tuner.adapters.state_dict("kept").items():
            assert torch.equal(value, kept[key])
