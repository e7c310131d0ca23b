"""Shared values and helpers of the settings tests."""

from __future__ import annotations

import json

import pytest

SERVICES_JSON = json.dumps({"payment-service": {"retry": {"max_retries": 0}}})


def error_text(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(exc_info.value)
