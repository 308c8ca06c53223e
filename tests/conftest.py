"""Unit tests run against the in-memory fake backend only: no engine is touched."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/kits, imported as `kits`
from kits.layers import LayerKit

import sandboxer
from sandboxer import _registry, _selector
from sandboxer._labels import LAUNCH
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


@pytest.fixture
def only_fake_engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hide the real engines: every command sees the fake backend alone; its sandboxes
    are removed afterwards."""
    monkeypatch.setattr(_registry, "_entry_points", dict)
    _selector._probe_cache.clear()
    yield
    monkeypatch.undo()  # a test may have broken FakeBackend.remove
    for name, box in list(FakeBackend.sandboxes.items()):
        FakeBackend().remove(name, box.plan.labels[LAUNCH])
    _selector._probe_cache.clear()
