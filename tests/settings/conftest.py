"""Every settings test starts without any ``MESH_*`` variable."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_mesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without any MESH_* variable (settings read them case-insensitively)."""
    for key in list(os.environ):
        if key.upper().startswith("MESH_"):
            monkeypatch.delenv(key)
