"""An engine daemon restarted while a sandbox runs: calls fail cleanly, then recover.

DISRUPTIVE: this stops and restarts dockerd, incusd or libvirtd, which everything else on
the machine shares. The tests carry the `disruptive` marker so a normal run deselects
them (`-m "not disruptive"`); CI runs them on their own with SANDBOXER_DISRUPTIVE=1. If
they are selected without that variable they fail on purpose, before touching a daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import sandboxer
from sandboxer._labels import OWNER_PID
from sandboxer._registry import backend_class, get_backend

pytestmark = pytest.mark.disruptive

ROOT = Path(__file__).resolve().parent.parent
ENABLE = "SANDBOXER_DISRUPTIVE"

# Whether a running sandbox outlives its daemon's restart. dockerd (without live-restore,
# as scripts/setup starts it) stops its containers on shutdown; incusd and libvirtd leave
# containers and QEMU processes running and find them again.
SURVIVES = {"docker": False, "incus": True, "libvirt": True}
PID_FILES = {"docker": "/run/docker.pid", "libvirt": "/run/libvirtd.pid"}
INCUSD = "/usr/libexec/incus/incusd"


def _daemon_pid(backend: str) -> int:
    if backend in PID_FILES:
        return int(Path(PID_FILES[backend]).read_text().strip())
    # incusd writes no pid file; its helpers (forkproxy, callhook...) share the binary but
    # take a subcommand first, while the daemon itself starts with options; each
    # container's "[lxc monitor]" also runs the binary, under a rewritten argv[0].
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if exe != INCUSD or not argv[0].endswith(b"incusd"):
            continue
        if len(argv) < 2 or not argv[1] or argv[1].startswith(b"-"):
            return int(entry.name)
    raise AssertionError("incusd is not running")


def _stop_daemon(backend: str) -> None:
    pid = _daemon_pid(backend)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"{backend} daemon {pid} did not stop"
        time.sleep(0.2)


def _start_daemon(backend: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "setup-engines.sh"), backend], check=True)
    deadline = time.monotonic() + 120
    while not backend_class(backend).probe().available:
        assert time.monotonic() < deadline, f"{backend} did not come back"
        time.sleep(0.5)


def _ours(backend: str) -> set[str]:
    pid = str(os.getpid())
    return {i.name for i in get_backend(backend).list_sandboxes() if i.labels[OWNER_PID] == pid}


def test_daemon_restart_while_a_sandbox_runs(backend: str) -> None:
    if os.environ.get(ENABLE) != "1":
        pytest.fail(
            f"this test restarts the {backend} daemon under everyone using it; run it alone "
            f'with {ENABLE}=1 (as .ci/run does), or deselect it with -m "not disruptive"'
        )
    sandbox = sandboxer.launch(backend=backend)
    try:
        assert sandbox.exec(["echo", "before"]).stdout == b"before\n"
        _stop_daemon(backend)
        try:
            with pytest.raises(sandboxer.SandboxError):
                sandbox.exec(["echo", "during"], timeout=30)
        finally:
            _start_daemon(backend)
        if SURVIVES[backend]:
            assert sandbox.exec(["echo", "after"], timeout=60).stdout == b"after\n"
        else:
            with pytest.raises(sandboxer.SandboxError):
                sandbox.exec(["echo", "after"], timeout=60)
    finally:
        sandbox.destroy()
    assert sandbox.name not in _ours(backend)
    # The process's shared backend client works again without a restart of ours.
    with sandboxer.launch(backend=backend) as fresh:
        assert fresh.exec(["echo", "fresh"]).stdout == b"fresh\n"
