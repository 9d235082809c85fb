"""The runtime does not import the test and research scaffolding: `peft_hyper.testing` (tiny models, test videos, the
synthetic world) is shipped for tests, examples and users, but no runtime module may need it."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import peft_hyper

PACKAGE = Path(peft_hyper.__file__).parent
RUNTIME_MODULES = (
    "peft_hyper",
    "peft_hyper.cli",
    "peft_hyper.evaluation",
    "peft_hyper.evaluation.runner",
    "peft_hyper.trainer",
    "peft_hyper.data",
    "peft_hyper.serving",
)


def test_runtime_modules_do_not_import_the_testing_package():
    script = (
        f"import json, sys\nimport {', '.join(RUNTIME_MODULES)}\n"
        "print(json.dumps(sorted(name for name in sys.modules if name.startswith('peft_hyper'))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(RUNTIME_MODULES) <= set(loaded)  # the check ran on the modules it names
    assert [name for name in loaded if name.startswith("peft_hyper.testing")] == []


def test_no_runtime_module_imports_the_testing_package_even_lazily():
    """Imports inside functions (as the evaluation once rendered synthetic clips) do not show in `sys.modules` until
    they run, so every runtime module's source is checked too."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "testing":
            continue
        package = ["peft_hyper", *relative.parent.parts]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):  # `from ..testing import x`, `from . import testing`
                module = [*package[: len(package) - node.level + 1]] if node.level else []
                module += node.module.split(".") if node.module else []
                names = [".".join([*module, alias.name]) for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(name.startswith("peft_hyper.testing") for name in names):
                offenders.append(f"{relative}:{node.lineno}")
    assert offenders == []
