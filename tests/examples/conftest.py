"""The examples import demo_upstreams.py as a top-level module (``python examples/x.py`` puts examples/ on
``sys.path``); the tests load them the same way."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


def load_example(stem: str) -> ModuleType:
    """The example ``examples/<stem>.py`` as a module (its ``main()`` does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{stem}", EXAMPLES / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
