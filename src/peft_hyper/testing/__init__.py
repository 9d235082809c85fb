"""Test and research scaffolding, shipped with the package but imported by none of its runtime modules (as
`transformers.testing_utils`): `tests/`, `examples/` and `benchmarks/` build on it, and so can users.

- [`models`]: tiny SmolVLM tokenizers, processors and models built offline, and the real SmolVLM2 architectures;
- [`videos`]: the moving-square test pattern and the one mp4 writer;
- [`world`]: the synthetic video world (seeded clip specs, rendering, ground-truth captions and questions, datasets),
  and [`render_spec_video`], the video loader that lets `frames2lora eval` render a dataset's `spec` column;
- [`long_world`]: long videos made of the world's clips as scenes, their single- and cross-scene questions and
  datasets, and their loader [`long_world.render_long_spec_video`] (`import peft_hyper.testing.long_world`; not
  imported with this package).

`tests/test_import_graph.py` checks that importing `peft_hyper` and its runtime modules leaves this package unloaded.
"""

from . import models, videos, world
from .models import *  # noqa: F403
from .videos import *  # noqa: F403
from .world import *  # noqa: F403

__all__ = [*models.__all__, *videos.__all__, *world.__all__]
