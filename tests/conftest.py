"""Unit tests run against the in-memory fake backend only: no engine is touched."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer.testing import FakeBackend


@pytest.fixture(autouse=True, scope="session")
def fake_backend() -> Iterator[type[FakeBackend]]:
    sandboxer.register_backend("fake", FakeBackend, replace=True)
    yield FakeBackend
    sandboxer.unregister_backend("fake")


@pytest.fixture(scope="class")
def backend() -> str:
    return "fake"
