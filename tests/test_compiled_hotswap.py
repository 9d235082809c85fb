"""A model under `torch.compile` takes newly internalized adapters without recompiling: replacing an adapter copies
into the parameters the compiled graph already reads. Recompiles are counted with dynamo's own counters."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_hotswapped_adapters_need_no_recompile_and_mixed_batches_still_work(hyper_model, clips, backend):
    torch._dynamo.reset()
    counters.clear()
    hyper_model.eval()
    tuner = hyper_model.base_model
    tuner.internalize(clips[0], adapter_name="slot")
    vlm = tuner.model
    compiled = torch.compile(hyper_model, backend=backend)  # the PeftModel, as a user compiles it
    inputs = tuner.text_inputs(["What moves?"])
    with torch.no_grad():
        first = compiled(**inputs).logits
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1

    for clip in clips[1:]:  # new videos into the same slot
        tuner.internalize(clip, adapter_name="slot")
        with torch.no_grad():
            swapped = compiled(**inputs).logits
            eager = vlm(**inputs).logits
        torch.testing.assert_close(swapped, eager, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(swapped, first, atol=1e-4)  # the new adapter is the one applied
    assert counters["stats"]["unique_graphs"] == graphs, "a hot-swap recompiled the model"

    tuner.internalize(clips[0], adapter_name="other")  # a new name adds slots: one new graph at most
    batch = tuner.text_inputs(["What moves?", "What moves?"])
    with torch.no_grad():
        mixed = compiled(**batch, adapter_names=["slot", "other"]).logits
    for row, name in enumerate(["slot", "other"]):
        tuner.set_adapter(name)
        with torch.no_grad():
            torch.testing.assert_close(mixed[row], vlm(**batch).logits[row], rtol=1e-5, atol=1e-5)
