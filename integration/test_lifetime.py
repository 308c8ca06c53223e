"""max_lifetime on real engines: a sandbox goes at its end although its owner was killed
with SIGKILL (its reaper process removes it), and gc removes an expired one whoever owns
it (the backstop when the reaper itself is gone).

Only this test's own sandboxes are looked at (by launch id): other sessions using the
same engines at the same time do not disturb it.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import _gc, _launch
from sandboxer._labels import EXPIRES, LAUNCH
from sandboxer._registry import get_backend

# Generous: a VM is destroyed in seconds under TCG, and the machine is shared.
GONE_WITHIN = 180.0
LAUNCHED_WITHIN = 300.0
_OWNER = """
import sys, time, sandboxer
sb = sandboxer.launch(backend=sys.argv[1], max_lifetime=5)
print(sb.name, sb.labels["sandboxer.launch"], flush=True)
time.sleep(3600)
"""


def _held(backend: str, launch: str) -> list[sandboxer.SandboxInfo]:
    """What the engine still holds of launch `launch`: the sandbox or its leftovers."""
    engine = get_backend(backend)
    found = engine.list_sandboxes() + engine.leftovers()
    return [info for info in found if info.labels.get(LAUNCH) == launch]


def _read_line(process: subprocess.Popen[str], deadline: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(max(0.0, deadline - time.monotonic())), "the owner never launched"
    return process.stdout.readline()


@pytest.fixture
def owner(backend: str) -> Iterator[subprocess.Popen[str]]:
    """A process that launches a sandbox of 5 s (keep=False) and waits to be killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", _OWNER, backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def test_a_sandbox_goes_at_its_end_although_its_owner_was_sigkilled(
    backend: str, owner: subprocess.Popen[str]
) -> None:
    line = _read_line(owner, time.monotonic() + LAUNCHED_WITHIN)
    name, launch = line.split()
    os.kill(owner.pid, signal.SIGKILL)  # no atexit, no destroy: only the reaper is left
    assert owner.wait() == -signal.SIGKILL
    try:
        deadline = time.monotonic() + GONE_WITHIN
        while _held(backend, launch) and time.monotonic() < deadline:
            time.sleep(1)
        assert _held(backend, launch) == [], f"{name} outlived its max_lifetime"
    finally:
        for info in _held(backend, launch):
            get_backend(backend).remove(info.name, launch)


def test_gc_removes_an_expired_sandbox_kept_and_owned_by_a_live_process(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No reaper: what removes it here is gc alone (as after a host reboot).
    monkeypatch.setattr(_launch, "start_reaper", lambda *args: None)
    sb = sandboxer.launch(backend=backend, keep=True, max_lifetime=3600)
    launch = sb.labels[LAUNCH]
    try:
        assert sandboxer.gc(backends=[backend], labels={LAUNCH: launch}) == []
        assert _held(backend, launch)
        expired = float(sb.labels[EXPIRES]) + 1
        monkeypatch.setattr(_gc, "time", types.SimpleNamespace(time=lambda: expired))
        removed = sandboxer.gc(backends=[backend], labels={LAUNCH: launch})
        assert [info.name for info in removed] == [sb.name]
        assert _held(backend, launch) == []
    finally:
        sb.destroy()
