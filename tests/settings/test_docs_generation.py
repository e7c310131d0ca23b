"""The configuration reference takes each field's text from the ``#:`` comment above it in the model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Documented(BaseModel):
    #: How long to wait, in ``seconds``;
    #: continued on a second line.
    wait: float = 1.0
    #: A second field.
    other: int = 2


class _Undocumented(BaseModel):
    #: Has a comment.
    documented: int = 1
    bare: int = 2


def test_a_fields_comment_is_its_text_in_the_reference() -> None:
    """Each field's ``#:`` comment lines, joined and with RST literals as Markdown, describe it in the table."""
    lines = _load_generator()._field_table(_Documented, None, with_presets=False, key_prefix="Documented")
    assert "- `wait`: How long to wait, in `seconds`; continued on a second line." in lines
    assert "- `other`: A second field." in lines


def test_a_field_without_a_comment_fails_the_generator_naming_it() -> None:
    """A field with no ``#:`` comment stops the generator, naming the field, instead of leaving it blank."""
    with pytest.raises(RuntimeError, match=r"Undocumented\.bare has no text"):
        _load_generator()._field_table(_Undocumented, None, with_presets=False, key_prefix="Undocumented")
