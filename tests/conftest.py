"""Unit tests run against the in-memory fake backend only: no engine is touched."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/kits, imported as `kits`
from kits.layers import LayerKit

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


@pytest.fixture
def layers(tmp_path: Path) -> LayerKit:
    """Layer blobs for a test, and the tree they unpack into."""
    return LayerKit(tmp_path)
