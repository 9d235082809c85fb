"""Adapters of video segments composed in rank space: exact composition, the rank cap, segment timestamps, loading
and saving composed adapters, and refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config
from peft import PeftModel, get_peft_model
from transformers import SmolVLMForConditionalGeneration

from peft_hyper import HyperLoraConfig, InvalidAdapterError, compose_adapters, load_video, split_video
from peft_hyper.composition import compose_factors, truncation_errors
from peft_hyper.lora import factors_to_state_dicts, lora_state_dict_keys
from peft_hyper.testing.videos import make_test_frames

R, BIAS = 4, 4  # small_config: rank 4 + bias rank 4


def delta(state_dict, module) -> torch.Tensor:
    key_a, key_b = lora_state_dict_keys(module)
    return state_dict[key_b].double() @ state_dict[key_a].double()


def modules(state_dict) -> list[str]:
    return sorted({key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for key in state_dict})


@pytest.fixture
def parts(hyper_model, clips):
    return hyper_model.generate_adapter(clips)  # three videos' adapters, one hypernetwork


def test_composition_adds_the_video_deltas_and_counts_the_bias_block_once(hyper_model, parts):
    composed = compose_adapters(parts)  # the bias rank found from the shared trailing ranks
    assert composed == {} or all(v.shape[0] == 3 * R + BIAS for k, v in composed.items() if ".lora_A." in k)
    bias = hyper_model.generate_bias_adapter()
    for module in modules(composed):
        expected = sum(delta(part, module) - delta(bias, module) for part in parts) + delta(bias, module)
        torch.testing.assert_close(delta(composed, module), expected, rtol=1e-5, atol=1e-6)
    assert compose_adapters(parts, bias_rank=BIAS).keys() == composed.keys()
    single = compose_adapters(parts[:1])
    assert all(torch.equal(single[k], parts[0][k]) for k in parts[0])  # one part: unchanged


def test_a_capped_rank_is_exact_when_delta_w_allows_it_and_the_best_truncation_otherwise(parts):
    many = parts * 6  # 18 segments: rank 18·4 + 4 = 76 > min(in, out) = 64 for down_proj (128 → 64)
    full = compose_adapters(many, bias_rank=BIAS)
    capped = compose_adapters(many, bias_rank=BIAS, max_rank=64)
    for module in modules(full):
        assert capped[lora_state_dict_keys(module)[0]].shape[0] == 64
        torch.testing.assert_close(delta(capped, module), delta(full, module), rtol=1e-5, atol=1e-6)
    assert max(truncation_errors(full, 64).values()) < 1e-6

    low = compose_adapters(parts, bias_rank=BIAS, max_rank=3)
    errors = truncation_errors(compose_adapters(parts, bias_rank=BIAS), 3)
    for module in modules(low):
        dense = delta(compose_adapters(parts, bias_rank=BIAS), module)
        s = torch.linalg.svdvals(dense)
        best = (s[3:].square().sum() / s.square().sum()).sqrt()  # Eckart–Young
        got = torch.linalg.matrix_norm(delta(low, module) - dense) / torch.linalg.matrix_norm(dense)
        assert abs(float(got) - float(best)) < 1e-6 and abs(errors[module] - float(best)) < 1e-6


def test_adapters_of_different_hypernetworks_or_shapes_are_refused(vlm, parts, clips):
    other = get_peft_model(vlm, small_config()).generate_adapter(clips[0])  # another (random) bias block
    with pytest.raises(InvalidAdapterError, match="bias"):
        compose_adapters([parts[0], other], bias_rank=BIAS)
    with pytest.raises(InvalidAdapterError, match="share no bias block"):
        compose_adapters([parts[0], other])
    assert compose_adapters([parts[0], other], bias_rank=0)  # a hypernetwork without a bias block: say so
    key = next(iter(parts[0]))
    with pytest.raises(InvalidAdapterError, match="shapes"):
        compose_adapters([parts[0], {**parts[1], key: parts[1][key][:-1]}], bias_rank=BIAS)
    with pytest.raises(InvalidAdapterError):
        compose_adapters([], bias_rank=BIAS)
    with pytest.raises(InvalidAdapterError, match="max_rank"):
        compose_adapters(parts, max_rank=0)


def test_segments_keep_their_times_in_the_whole_video(clips, hyper_model):
    video = load_video(clips[0], num_frames=16)
    segments = split_video(video, 6)
    assert [s.num_frames for s in segments] == [6, 6, 4]
    assert sum((s.metadata.timestamps for s in segments), []) == list(video.metadata.timestamps)
    assert all(s.metadata.duration == video.metadata.duration for s in segments)
    tokenizer = hyper_model.processor.tokenizer
    last = tokenizer.decode(hyper_model.hypernetwork_inputs(segments[-1:])["input_ids"][0])
    assert "Frame from 00:01" in last and "Frame from 00:00" not in last  # the last segment says where it is


def test_segmented_internalization_composes_one_forward_per_batch_of_segments(
    hyper_model, clips, tiny_base_dir, tmp_path
):
    hyper_model.eval()
    video = load_video(clips[0], num_frames=16)
    by_hand = compose_adapters([hyper_model.generate_adapter(s) for s in split_video(video, 4)], bias_rank=BIAS)
    calls = []
    forward = hyper_model.base_model.generate_lora_factors

    def counting(inputs, *args, **kwargs):
        calls.append(inputs["input_ids"].shape[0])
        return forward(inputs, *args, **kwargs)

    hyper_model.base_model.generate_lora_factors = counting
    segmented = hyper_model.generate_adapter(clips[0], num_frames=16, segment_frames=4, segment_batch_size=3)
    del hyper_model.base_model.generate_lora_factors
    assert calls == [3, 1]  # 4 segments, 3 per forward
    for key in by_hand:
        torch.testing.assert_close(segmented[key], by_hand[key], rtol=1e-4, atol=1e-6)

    inputs = hyper_model.text_inputs("What moves?")
    hyper_model.internalize(clips[0], adapter_name="film", num_frames=16, segment_frames=4)
    with torch.no_grad():
        expected = hyper_model(**inputs).logits
    hyper_model.save_adapter("film", tmp_path / "film")
    stock = PeftModel.from_pretrained(
        SmolVLMForConditionalGeneration.from_pretrained(tiny_base_dir), tmp_path / "film"
    )
    with torch.no_grad():
        torch.testing.assert_close(stock.eval()(**inputs).logits, expected, rtol=1e-5, atol=1e-5)

    hyper_model.internalize(clips[1], adapter_name="film")  # the same name at the plain rank: replaced
    assert hyper_model.base_model.adapters.config("film").r == R + BIAS


def test_internalize_command_writes_a_composed_adapter(clips, tmp_path, capsys):
    import json

    from peft_hyper.cli import main

    out = tmp_path / "long"
    argv = ["internalize", clips[0], "-o", str(out), "--frames", "16", "--segment-frames", "4", "--max-rank", "12"]
    assert main(argv) == 0
    assert "rank 12" in capsys.readouterr().out
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 12
    shots = ["internalize", clips[0], "--frames", "16", "--segment-frames", "5,3,8"]  # segments at given boundaries
    assert main([*shots, "-o", str(tmp_path / "shots")]) == 0
    assert (
        json.loads((tmp_path / "shots" / "adapter_config.json").read_text())["r"] == 3 * 8 + 8
    )  # embedded: r = r_b = 8
    capsys.readouterr()
    assert main([*shots[:-1], "5,3", "-o", str(tmp_path / "short")]) == 2
    assert "add up to 8" in capsys.readouterr().err and not (tmp_path / "short").exists()


def test_composed_factors_are_the_composed_adapters_of_each_video_and_carry_gradients(hyper_model, clips):
    tuner = hyper_model.base_model
    videos, _ = tuner.load_videos(clips[:2])
    segments = split_video(videos[0], 1) + split_video(videos[1], 2)  # 4 segments of video 0, 2 of video 1
    factors = tuner.generate_lora_factors(tuner.hypernetwork_inputs(segments), grad=True)
    composed = compose_factors(factors, torch.tensor([0, 0, 0, 0, 1, 1]), BIAS)
    name, (lora_a, lora_b) = next(iter(composed.items()))
    assert lora_a.shape[:2] == (2, 4 * R + BIAS) and lora_b.shape[::2] == (2, 4 * R + BIAS)

    parts = factors_to_state_dicts(factors)
    expected = [compose_adapters(parts[:4], bias_rank=BIAS), compose_adapters(parts[4:], bias_rank=BIAS)]
    per_video = [
        {k: v.detach() for k, v in state_dict.items()}
        for state_dict in factors_to_state_dicts({n: (a, b) for n, (a, b) in composed.items()})
    ]
    assert all(torch.equal(per_video[0][k], expected[0][k]) for k in expected[0])  # the same layout, bit for bit
    for module in modules(expected[1]):  # video 1 is zero-padded to the batch's rank: the same ΔW
        torch.testing.assert_close(delta(per_video[1], module), delta(expected[1], module), rtol=1e-6, atol=1e-7)

    (lora_a.sum() + lora_b.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tuner.hypernetwork.parameters())
    with pytest.raises(ValueError, match="needs a segment"):
        compose_factors(factors, torch.tensor([0, 0, 2, 2, 2, 2]), BIAS)


def test_segments_cover_the_whole_video_at_one_frame_per_second_unless_told_otherwise(hyper_model, clips):
    tuner = hyper_model.base_model  # small_config: num_frames=4, fps=None
    frames = make_test_frames(40, 32, 32, seed=0)  # pre-decoded frames are 1 fps unless said: 40 s
    rank = lambda sd: next(v.shape[0] for k, v in sd.items() if ".lora_A." in k)  # noqa: E731
    assert rank(tuner.generate_adapter(frames, segment_frames=12)) == 4 * R + BIAS  # 40 frames: 12 + 12 + 12 + 4
    assert len(tuner.generate_segment_adapters(frames, 12)) == 4
    assert rank(tuner.generate_adapter(frames, segment_frames=12, num_frames=24)) == 2 * R + BIAS  # as asked
    assert rank(tuner.generate_adapter(clips[0], segment_frames=1)) == 2 * R + BIAS  # 16 frames at 8 fps: 2 s
    assert rank(tuner.generate_adapter(frames)) == R + BIAS  # without segments: the config's 4 frames, one adapter
    shots = tuner.generate_segment_adapters(frames, [10, 20, 10])  # segments at given boundaries, e.g. shots
    assert len(shots) == 3 and rank(tuner.generate_adapter(frames, segment_frames=[10, 20, 10])) == 3 * R + BIAS
    video = tuner.load_videos(frames, num_frames=40)[0][0]
    alone = tuner.generate_adapter(split_video(video, [10, 20, 10])[1])  # the middle shot, stamped 00:10-00:29
    assert all(torch.allclose(alone[k], shots[1][k], rtol=1e-4, atol=1e-6) for k in alone)


@pytest.mark.parametrize("scaling, weight", [("sqrt", 3**-0.5), ("mean", 1 / 3)])
def test_a_scaled_composition_weighs_every_segment_and_keeps_the_bias_block_whole(hyper_model, parts, scaling, weight):
    composed = compose_adapters(parts, scaling=scaling)
    bias = hyper_model.generate_bias_adapter()
    for module in modules(composed):
        generated = sum(delta(part, module) - delta(bias, module) for part in parts)
        torch.testing.assert_close(
            delta(composed, module), weight * generated + delta(bias, module), rtol=1e-5, atol=1e-6
        )
    single = compose_adapters(parts[:1], bias_rank=BIAS, scaling=scaling)
    assert all(torch.equal(single[k], parts[0][k]) for k in parts[0])  # one segment composes to itself
    with pytest.raises(InvalidAdapterError, match="scaling"):
        compose_adapters(parts, scaling="max")


def test_segmented_internalization_and_compose_adapters_use_the_configs_segment_scaling(vlm, clips):
    tuner = get_peft_model(vlm, small_config(segment_scaling="sqrt")).base_model
    parts = tuner.generate_segment_adapters(clips[0], segment_frames=4, num_frames=16)
    segmented = tuner.generate_adapter(clips[0], num_frames=16, segment_frames=4)
    by_hand = compose_adapters(parts, bias_rank=BIAS, scaling="sqrt")
    assert tuner.compose_adapters(parts).keys() == by_hand.keys()
    for key in by_hand:
        torch.testing.assert_close(segmented[key], by_hand[key], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(tuner.compose_adapters(parts)[key], by_hand[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="segment_scaling"):
        small_config(segment_scaling="max")


def test_a_hypernetwork_with_time_encoding_puts_each_segments_time_span_into_its_adapter(vlm, clips, tmp_path):
    from peft_hyper.errors import UsageError
    from peft_hyper.inputs import video_time_spans

    model = get_peft_model(vlm, small_config(time_encoding=True))
    tuner = model.base_model
    video = load_video(clips[0], num_frames=4)
    inputs = tuner.hypernetwork_inputs([video])
    early, late = torch.tensor([[0.0, 1.5]]), torch.tensor([[600.0, 601.5]])

    def adapter(time_spans):
        return factors_to_state_dicts(tuner.generate_lora_factors(inputs, time_spans=time_spans))[0]

    at_first = adapter(early)
    assert all(torch.equal(at_first[k], adapter(late)[k]) for k in at_first)  # time starts with no say
    torch.nn.init.normal_(tuner.hypernetwork.time_proj.weight)
    at_first = adapter(early)
    assert any(not torch.equal(at_first[k], adapter(late)[k]) for k in at_first)  # now an adapter knows when
    assert video_time_spans([video]).tolist() == [[video.metadata.timestamps[0], video.metadata.timestamps[-1]]]
    own = tuner.generate_adapter(clips[0])  # chunked inputs: each video's own time span
    expected = adapter(video_time_spans([video]))
    assert all(torch.allclose(own[k], expected[k], rtol=1e-4, atol=1e-6) for k in own)
    with pytest.raises(UsageError, match="time span"):
        tuner.generate_lora_factors(inputs)

    model.save_pretrained(tmp_path / "ckpt")
    base = SmolVLMForConditionalGeneration.from_pretrained(vlm.name_or_path)
    loaded = PeftModel.from_pretrained(base, tmp_path / "ckpt")
    again = loaded.generate_adapter(clips[0])
    assert all(torch.equal(again[k], own[k]) for k in own)
    with pytest.raises(ValueError, match="time_encoding"):
        HyperLoraConfig(architecture="frames2lora", time_encoding=True)
