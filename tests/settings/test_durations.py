"""Durations: ``parse_duration`` and the duration fields, seconds or a number with ``ms``, ``s``, ``m`` or ``h``."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fastapi_mesh.settings import MeshSettings, parse_duration
from tests.settings.support import error_text


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("500ms", 0.5),
        ("3s", 3.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("250 ms", 0.25),
        (" 2s ", 2.0),
        ("3", 3.0),
        ("0.25", 0.25),
        (".5", 0.5),
        (3, 3.0),
        (0.75, 0.75),
    ],
)
def test_parse_duration(raw: Any, seconds: float) -> None:
    """parse_duration turns unit strings, numeric strings and numbers into float seconds."""
    result = parse_duration(raw)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(("raw", "seconds"), [("500ms", 0.5), ("3s", 3.0), ("2m", 120.0), ("1h", 3600.0), ("7", 7.0)])
def test_duration_fields_accept_unit_strings(raw: str, seconds: float) -> None:
    """Duration fields of the settings parse unit strings to float seconds."""
    s = MeshSettings(
        circuit_breaker={"timeout": raw}, health_check={"liveness_interval": raw}, retry={"max_delay": raw}
    )
    assert s.circuit_breaker.timeout == seconds
    assert s.health_check.liveness_interval == seconds
    assert s.retry.max_delay == seconds


@pytest.mark.parametrize("raw", ["abc", "5 parsecs", "", "1.2.3s", "5sec"])
def test_bad_duration_string_names_the_field(raw: str) -> None:
    """A string that is not a duration fails at construction naming the field and the value."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(retry={"max_delay": raw})
    message = error_text(exc_info)
    assert "retry.max_delay" in message
    assert f"not a duration: {raw!r}" in message
    errors = exc_info.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == ("retry", "max_delay")


@pytest.mark.parametrize("bad", [None, [1]])
def test_parse_duration_passes_non_durations_through(bad: Any) -> None:
    """parse_duration hands non-numbers back unchanged, for pydantic to judge."""
    assert parse_duration(bad) is bad


def test_negative_duration_string_fails_on_the_bound() -> None:
    """A "-1s" string parses as a number and then fails the field's positivity bound, naming the field."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(retry={"max_delay": "-1s"})
    assert exc_info.value.errors()[0]["loc"] == ("retry", "max_delay")
    assert "greater than 0" in error_text(exc_info)


@pytest.mark.parametrize("raw", ["1e-3s", "2E1ms", "3S", "500MS", "5."])
def test_duration_spellings(raw: str) -> None:
    """Exponents, upper-case units and a trailing dot are read as numbers."""
    expected = {"1e-3s": 0.001, "2E1ms": 0.02, "3S": 3.0, "500MS": 0.5, "5.": 5.0}[raw]
    assert parse_duration(raw) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [True, None, [1], {"s": 1}])
def test_non_duration_value_is_rejected(bad: Any) -> None:
    """A bool, None or container given as a duration fails naming the field (True is not 1 second)."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(circuit_breaker={"timeout": bad})
    assert "\ncircuit_breaker.timeout\n" in error_text(exc_info)


@hypothesis_settings(database=None, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e6, exclude_min=True, allow_nan=False, allow_subnormal=False))
@example(0.5)
@example(1e6)
@example(1e-05)
def test_seconds_and_milliseconds_agree(x: float) -> None:
    """Any duration written as f"{x}s" and as f"{x*1000}ms" parses to the same seconds."""
    # subnormals are excluded: they carry too few significant bits for a 1e-9 relative comparison
    from_seconds = parse_duration(f"{x}s")
    from_millis = parse_duration(f"{x * 1000}ms")
    assert math.isclose(from_seconds, from_millis, rel_tol=1e-9)
    assert math.isclose(from_seconds, x, rel_tol=1e-9)
