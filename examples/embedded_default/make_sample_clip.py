"""Write the sample clips shipped with the package (`peft_hyper/samples/`), used by `frames2lora demo` and
`frames2lora app`.

    python examples/embedded_default/make_sample_clip.py

The clips come from the synthetic world's "sample" split (seeds disjoint from training, validation and test), in
seed order: `synthetic_clip` is the first clip with at least two objects and a temporal question (the demo's clip),
`synthetic_clip_2` … `synthetic_clip_4` the next three such clips. None is chosen by how well any model answers it.
Each is written with its ground truth (`<name>.json`: caption, questions and answers, the clip's spec).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import peft_hyper
from peft_hyper.testing import world as S

NUM_FRAMES, SIZE = 12, 64
NAMES = ["synthetic_clip", "synthetic_clip_2", "synthetic_clip_3", "synthetic_clip_4"]


def eligible_clips() -> Iterator[tuple[int, S.ClipSpec, list[S.QA]]]:
    """(index, spec, questions) of the "sample" split's clips with at least two objects and a temporal question."""
    for index in range(1000):
        spec = S.sample_spec(S.clip_seed(0, "sample", index))
        qas = S.questions(spec)
        if len(spec.objects) >= 2 and any(qa.kind == "temporal" for qa in qas):
            yield index, spec, qas


def main() -> None:
    folder = Path(peft_hyper.__file__).parent / "samples"
    for name, (index, spec, qas) in zip(NAMES, eligible_clips(), strict=False):  # the generator is endless
        S.write_clip(spec, folder / f"{name}.mp4", NUM_FRAMES, SIZE, fps=1.0)
        truth = {
            "clip": f"sample-{index}",
            "num_frames": NUM_FRAMES,
            "size": SIZE,
            "caption": S.caption(spec),
            "questions": [{"question": qa.question, "answer": qa.answer, "kind": qa.kind} for qa in qas],
            "spec": spec.to_dict(),
        }
        (folder / f"{name}.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {folder / name}.mp4 ({truth['clip']}): {truth['caption']}")


if __name__ == "__main__":
    main()
