"""Quickstart: turn a video into a PEFT LoRA adapter and answer questions with zero visual tokens in context.

Runs offline on a tiny SmolVLM built on the fly (random weights, so the answers are noise: this shows the data flow
and the APIs, not quality). With a real model, replace the first block with
`SmolVLMForConditionalGeneration.from_pretrained("HuggingFaceTB/SmolVLM2-500M-Video-Instruct")`.

    python examples/quickstart.py [--video clip.mp4] [--workdir outputs/quickstart]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import SmolVLMForConditionalGeneration

import peft_hyper  # registers the HYPERLORA peft type
from peft_hyper.testing.models import save_tiny_smolvlm
from peft_hyper.testing.world import caption, sample_spec, write_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", help="an mp4 to internalize (default: a synthetic clip)")
    parser.add_argument("--workdir", default="outputs/quickstart")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    base_dir = save_tiny_smolvlm(workdir / "tiny_smolvlm")  # config + locally trained tokenizer + processor
    video = args.video
    if video is None:
        spec = sample_spec(seed=7)
        video = write_clip(spec, workdir / "clip.mp4", num_frames=12, size=64)
        print(f"synthetic clip: {video}\n  ground truth: {caption(spec)}")

    vlm = SmolVLMForConditionalGeneration.from_pretrained(base_dir).eval()
    config = peft_hyper.HyperLoraConfig(
        r=8, latent_dim=64, num_latents=8, num_blocks=2, num_heads=4, head_dim=16, init_scale_b=0.5
    )
    model = get_peft_model(vlm, config).eval()
    model.print_trainable_parameters()

    start = time.perf_counter()
    lora_state_dict = model.internalize(video, adapter_name="clip")
    print(
        f"internalized in {time.perf_counter() - start:.2f}s: {len(lora_state_dict)} LoRA tensors, {model.lora_config.r=}"
    )

    questions = ["What colour is the square?", "Which way does it move?"]
    inputs = model.text_inputs(questions)  # the prompt `answer` builds: zero visual tokens
    visual = int((inputs["input_ids"] == model.processor.image_token_id).sum())
    for question, answer in zip(questions, model.answer(questions, max_new_tokens=8), strict=True):
        print(f"Q: {question}  A: {answer!r}  (visual tokens in context: {visual})")

    adapter_dir = workdir / "adapters" / "clip"
    model.save_adapter("clip", adapter_dir)
    model.set_adapter("default")
    model.save_pretrained(workdir / "hypernetwork", selected_adapters=["default"])
    print(f"plain PEFT LoRA adapter: {adapter_dir}\nhypernetwork checkpoint: {workdir / 'hypernetwork'}")

    check = (
        "import sys, peft, transformers; "
        f"base = transformers.SmolVLMForConditionalGeneration.from_pretrained({str(base_dir)!r}); "
        f"peft.PeftModel.from_pretrained(base, {str(adapter_dir)!r}); "
        "assert 'peft_hyper' not in sys.modules; print('stock PEFT loaded the adapter without peft_hyper')"
    )
    subprocess.run([sys.executable, "-c", check], check=True)


if __name__ == "__main__":
    main()
