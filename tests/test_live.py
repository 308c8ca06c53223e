"""The registry of sandboxes this process destroys at exit."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from sandboxer._live import LiveSandboxes


class Box:
    def __init__(self, name: str, live: LiveSandboxes, fails: bool = False) -> None:
        self.name = name
        self.live = live
        self.fails = fails
        self.destroyed = False

    def destroy(self) -> None:
        if self.fails:
            raise RuntimeError("engine gone")
        self.destroyed = True
        self.live.discard(self)  # as Sandbox.destroy does, while destroy_all iterates


def test_adds_and_discards_from_many_threads() -> None:
    live = LiveSandboxes()
    boxes = [Box(str(i), live) for i in range(500)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(live.add, boxes))
        list(pool.map(live.discard, boxes[::2]))
    assert [box.name for box in live] == [box.name for box in boxes[1::2]]


def test_destroy_all_goes_on_past_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    live = LiveSandboxes()
    broken, fine = Box("broken", live, fails=True), Box("fine", live)
    live.add(broken)
    live.add(fine)
    with caplog.at_level(logging.ERROR, logger="sandboxer"):
        live.destroy_all()
    assert fine.destroyed and fine not in live
    assert broken in live and "could not destroy broken at exit" in caplog.text
