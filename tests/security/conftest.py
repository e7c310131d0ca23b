"""Fixtures of the server-side tests: one PKI and one ``fastapi-mesh serve`` process per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.serve_support import Pki, Served


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def served(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``fastapi-mesh serve`` with the server's certificate, client certificates required, a plain port."""
    with Served(pki.server_env(), log_dir=tmp_path_factory.mktemp("logs")) as served:
        yield served
