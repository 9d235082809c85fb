"""The synthetic world and the test frames are pinned bit for bit: the shipped checkpoint, the evaluation sets and the
reports in docs/ were made from them, so the same seed must keep giving the same spec, frames and dataset rows."""

from __future__ import annotations

import hashlib
import json

import pytest

from peft_hyper.testing import world as S
from peft_hyper.testing.videos import make_test_frames


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.mark.parametrize(
    "seed, spec_digest, square_digest, wide_digest",
    [
        (0, "080689651482c051", "b566cbcad748a7e6", "2ef774e04733fe4a"),
        (1, "93fcfb49a7819e54", "e6e10548b724e1fa", "8ae7b44331fcc3b6"),
        (7, "653971a3ceb81ae3", "35238113ea050093", "241893a9fd8ecb82"),
        (12345, "588f9410e1cdd539", "487aef93090bc483", "1aa92161ec9cf8d3"),
    ],
)
def test_specs_and_rendered_frames_are_pinned(seed, spec_digest, square_digest, wide_digest):
    spec = S.sample_spec(seed)
    assert _digest(spec.to_json().encode()) == spec_digest
    assert _digest(S.render_clip(spec, 12, 64).numpy().tobytes()) == square_digest
    assert _digest(S.render_clip(spec, 5, (48, 80)).numpy().tobytes()) == wide_digest


def test_datasets_are_pinned():
    assert [S.clip_seed(0, "train", 0), S.clip_seed(0, "test", 3)] == [1153419844396191690, 2709095947972622101]
    rows = S.make_dataset(3, seed=0, split="test").to_list()
    assert len(rows) == 30 and _digest(json.dumps(rows, sort_keys=True).encode()) == "9eb1adbcb801d0d1"
    rows = S.make_dataset(4, seed=5, split="train", questions_per_clip=2, num_frames=8, size=32).to_list()
    assert len(rows) == 12 and _digest(json.dumps(rows, sort_keys=True).encode()) == "59927f4c07260dd5"


def test_test_frames_are_pinned():
    assert _digest(make_test_frames(16, 48, 64, seed=0).numpy().tobytes()) == "53b6e6b94d4b4b44"
    static = make_test_frames(8, 32, 32, seed=3, pattern="static_square")
    assert _digest(static.numpy().tobytes()) == "be74d46b61687801"
