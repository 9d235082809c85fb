"""Write the sample clip shipped with the package (`peft_hyper/samples/`), used by `frames2lora demo`.

    python examples/embedded_default/make_sample_clip.py

The clip is the first clip of the synthetic world's "sample" split (seeds disjoint from training, validation and
test) with at least two objects and a temporal question; it is not chosen by how well any model answers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import peft_hyper
from peft_hyper.testing import world as S

NUM_FRAMES, SIZE = 12, 64


def main() -> None:
    folder = Path(peft_hyper.__file__).parent / "samples"
    for index in range(1000):
        spec = S.sample_spec(S.clip_seed(0, "sample", index))
        qas = S.questions(spec)
        if len(spec.objects) >= 2 and any(qa.kind == "temporal" for qa in qas):
            break
    S.write_clip(spec, folder / "synthetic_clip.mp4", NUM_FRAMES, SIZE, fps=1.0)
    truth = {
        "clip": f"sample-{index}",
        "num_frames": NUM_FRAMES,
        "size": SIZE,
        "caption": S.caption(spec),
        "questions": [{"question": qa.question, "answer": qa.answer, "kind": qa.kind} for qa in qas],
        "spec": spec.to_dict(),
    }
    (folder / "synthetic_clip.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {folder / 'synthetic_clip.mp4'}: {truth['caption']}")


if __name__ == "__main__":
    main()
