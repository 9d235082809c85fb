"""Routing questions to the segment of a long video they are about (`routing.py`, `HyperLoraModel.route`)."""

from __future__ import annotations

import pytest
import torch
from conftest import pointing_at, small_config
from peft import PeftModel, get_peft_model
from transformers import SmolVLMForConditionalGeneration

from peft_hyper import HyperLoraConfig
from peft_hyper.errors import UsageError
from peft_hyper.routing import NO_TIME, RouterOutput, SegmentRouter, router_loss
from peft_hyper.testing.videos import make_test_frames, write_video


@pytest.fixture
def long_clip(tmp_path) -> str:
    """40 frames at 4 fps (10 s)."""
    return str(write_video(make_test_frames(40, 48, 64, seed=7), tmp_path / "long.mp4", fps=4))


def test_segment_probabilities_give_each_second_to_the_segment_it_falls_in():
    router = SegmentRouter(hidden_size=8, dim=16)
    frame_times, starts = torch.arange(48.0), torch.tensor([0.0, 12.0, 24.0, 36.0])
    for second, segment in ((5, 0), (12, 1), (23, 1), (40, 3)):
        pointing_at(router, second)
        output = router(torch.randn(2, 6, 8), torch.ones(2, 6, dtype=torch.bool))
        probabilities = router.segment_probabilities(output, frame_times, starts)
        assert probabilities.shape == (2, 5)
        torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))
        assert probabilities[:, :-1].argmax(dim=1).tolist() == [segment, segment]
        assert probabilities[0, segment] > 0.9
    pointing_at(router, None)
    output = router(torch.randn(1, 6, 8), torch.ones(1, 6, dtype=torch.bool))
    assert router.segment_probabilities(output, frame_times, starts)[0, -1] > 0.99


def test_padding_does_not_change_what_the_router_reads():
    torch.manual_seed(0)
    router = SegmentRouter(hidden_size=8, dim=16)
    states = torch.randn(1, 5, 8)
    padded = torch.cat([states, torch.randn(1, 3, 8)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    short = router(states, torch.ones(1, 5, dtype=torch.bool))
    long = router(padded, mask)
    torch.testing.assert_close(long.time_query, short.time_query)
    torch.testing.assert_close(long.no_time_logits, short.no_time_logits)


def test_a_router_learns_the_times_questions_name_from_the_base_states(vlm):
    """Supervised through the public pieces the training script uses: `question_states` and `router_loss`."""
    torch.manual_seed(0)
    model = get_peft_model(vlm, small_config(router_layer=1)).eval()
    tuner = model.base_model
    cues = {"what moves at 00:03?": 3, "what moves at 00:41?": 41, "what moves at 01:27?": 87, "describe it": NO_TIME}
    states, mask = tuner.question_states(list(cues))
    labels = torch.tensor(list(cues.values()))
    router = tuner.router
    optimizer = torch.optim.Adam(router.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = router_loss(router, router(states, mask), labels, max_seconds=120)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    probabilities = tuner.segment_probabilities(list(cues), torch.arange(120.0), torch.arange(0.0, 120.0, 12.0))
    assert probabilities[:3, :-1].argmax(dim=1).tolist() == [0, 3, 7]
    assert probabilities[:3, -1].max() < 0.5 < probabilities[3, -1]


def test_internalize_segments_then_route_each_question_to_its_segment(vlm, long_clip):
    model = get_peft_model(vlm, small_config(router_layer=1)).eval()
    tuner = model.base_model
    names = model.internalize_segments(long_clip, "film", segment_frames=3, fps=1)  # 10 s at 1 fps: 3, 3, 3, 1
    assert names == ["film-segment0", "film-segment1", "film-segment2", "film-segment3"]
    assert set(names) | {"film"} <= set(tuner.generated_adapters)
    assert tuner.active_adapter == "film"
    composed = tuner.adapters.state_dict("film")
    expected = model.generate_adapter(long_clip, segment_frames=3, fps=1)  # what internalize(segment_frames=) loads
    assert composed.keys() == expected.keys()
    assert all(torch.allclose(composed[k], expected[k], rtol=1e-5, atol=1e-6) for k in expected)
    segment = tuner.adapters.state_dict("film-segment1")
    assert all(torch.equal(segment[k], v) for k, v in model.generate_segment_adapters(long_clip, 3, fps=1)[1].items())

    pointing_at(tuner.router, 7.5)
    assert model.route(["which way?", "what colour?"], "film") == ["film-segment2"] * 2
    pointing_at(tuner.router, None)
    assert model.route("how many objects appear?", "film") == ["film"]
    answers = model.answer(["a", "b"], adapter_names=["film-segment0", "film"])
    assert len(answers) == 2

    model.delete_adapter("film")
    assert not set(names) & set(tuner.generated_adapters)
    with pytest.raises(UsageError, match="internalize_segments"):
        model.route("what colour?", "film")


def test_the_router_is_saved_and_loaded_with_the_hypernetwork(vlm, tmp_path):
    model = get_peft_model(vlm, small_config(router_layer=2)).eval()
    torch.nn.init.normal_(model.base_model.router.head.weight)
    questions = ["what moves at 00:05?", "what colour is it?"]
    frame_times, starts = torch.arange(12.0), torch.tensor([0.0, 4.0, 8.0])
    expected = model.segment_probabilities(questions, frame_times, starts)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = PeftModel.from_pretrained(
        SmolVLMForConditionalGeneration.from_pretrained(vlm.name_or_path), tmp_path / "ckpt"
    )
    assert loaded.peft_config["default"].router_layer == 2
    torch.testing.assert_close(loaded.segment_probabilities(questions, frame_times, starts), expected)


def test_routing_without_a_router_or_with_a_bad_layer_is_refused(vlm):
    model = get_peft_model(vlm, small_config())
    assert model.base_model.router is None
    with pytest.raises(UsageError, match="router_layer"):
        model.segment_probabilities("what moves at 00:05?", torch.arange(4.0), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="router_layer"):
        HyperLoraConfig(router_layer=-1)
    with pytest.raises(ValueError, match="layers"):
        get_peft_model(
            SmolVLMForConditionalGeneration.from_pretrained(vlm.name_or_path), small_config(router_layer=99)
        )


def test_router_loss_without_timed_questions_is_the_no_time_term_alone():
    router = SegmentRouter(hidden_size=8, dim=16)
    output = RouterOutput(time_query=torch.zeros(2, router.num_time_features), no_time_logits=torch.zeros(2))
    loss = router_loss(router, output, torch.tensor([NO_TIME, NO_TIME]), max_seconds=10)
    torch.testing.assert_close(loss, torch.log(torch.tensor(2.0)))
