"""Test helpers: an in-memory fake backend and the backend contract suite (`contract`)."""

from ._fake import FakeBackend

__all__ = ["FakeBackend"]
