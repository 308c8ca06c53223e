"""Faults on real engines: timeouts kill whole process trees, failed launches and crowds
of concurrent launches leave nothing behind.

Leftovers are counted among the sandboxes this test process launched (by the owner-pid
label), so other sessions using the same engines at the same time do not disturb it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxer
from sandboxer import Mount, Sandbox
from sandboxer._labels import MANAGED, OWNER_PID
from sandboxer._proctree import EXEC_MARKER
from sandboxer._registry import get_backend

# Concurrent launches through the API, per engine (a VM per launch is far heavier).
CONCURRENT = {"docker": 30, "incus": 10, "libvirt": 3}


def _ours(backend: str) -> set[str]:
    """Names of the sandboxes this process made that the engine still holds."""
    pid = str(os.getpid())
    return {
        info.name
        for info in get_backend(backend).list_sandboxes()
        if info.labels.get(OWNER_PID) == pid
    }


def _engine_leftovers(backend: str) -> set[str]:
    """Networks a launch makes beside the sandbox (libvirt keeps none: its per-sandbox
    files already show in list_sandboxes)."""
    pid = str(os.getpid())
    if backend == "docker":
        import docker  # the Docker SDK: installed with sandboxer[docker]

        client = docker.from_env()
        try:
            networks = client.networks.list(filters={"label": f"{OWNER_PID}={pid}"})
            return {f"network {n.name}" for n in networks if n.attrs["Labels"].get(MANAGED)}
        finally:
            client.close()
    if backend == "incus":
        listing = subprocess.run(
            ["incus", "network", "list", "--format", "json"],
            check=True,
            capture_output=True,
            text=True,
        )
        return {
            f"network {n['name']}"
            for n in json.loads(listing.stdout)
            if (n.get("config") or {}).get(f"user.{OWNER_PID}") == pid
        }
    return set()


def _snapshot(backend: str) -> set[str]:
    return _ours(backend) | _engine_leftovers(backend)


def _processes(sandbox: Sandbox) -> str:
    return sandbox.exec(["ps", "-o", "pid,args"], user="0", timeout=60).stdout.decode()


@pytest.fixture(scope="class")
def shared(backend: str) -> Iterator[Sandbox]:
    with sandboxer.launch(backend=backend) as sandbox:
        yield sandbox


# timeouts --------------------------------------------------------------------------------
class TestTimeoutKillsTheTree:
    def _wait_gone(self, sandbox: Sandbox, marker: str, seconds: float = 15) -> str:
        deadline = time.monotonic() + seconds
        while True:
            listing = _processes(sandbox)
            if marker not in listing or time.monotonic() > deadline:
                return listing
            time.sleep(0.5)

    def test_children_and_grandchildren_die(self, shared: Sandbox) -> None:
        # sh -> (sh -> sleep 3141 &, sleep 3142) &, sleep 3143: two levels below the command.
        script = "sh -c 'sleep 3141 & sleep 3142; :' & sleep 3143; :"
        started = time.monotonic()
        result = shared.exec(["sh", "-c", script], timeout=2)
        assert result.timed_out
        assert time.monotonic() - started < 30
        listing = self._wait_gone(shared, "sleep 314")
        assert "sleep 314" not in listing, f"survivors after the timeout:\n{listing}"

    def test_orphaned_grandchildren_die(self, shared: Sandbox) -> None:
        # The subshell exits at once: its sleep is re-parented away from the command's tree.
        script = "(sleep 2718 &); (setsid sleep 2719 &); sleep 2720"
        result = shared.exec(["sh", "-c", script], timeout=2)
        assert result.timed_out
        listing = self._wait_gone(shared, "sleep 27")
        assert "sleep 27" not in listing, f"survivors after the timeout:\n{listing}"

    @pytest.mark.parametrize(
        "script",
        [
            # The marker variable gone from the command itself and from a child.
            f"env -u {EXEC_MARKER} sleep 3161 & exec env -u {EXEC_MARKER} sleep 3162",
            # ...and from orphans that left the command's tree.
            f"(env -u {EXEC_MARKER} sleep 3163 &); (setsid env -u {EXEC_MARKER} sleep 3164 &); "
            "sleep 3165",
        ],
        ids=["in-the-tree", "orphaned"],
    )
    def test_processes_that_drop_the_marker_die(self, shared: Sandbox, script: str) -> None:
        result = shared.exec(["sh", "-c", script], timeout=2)
        assert result.timed_out
        listing = self._wait_gone(shared, "sleep 316")
        assert "sleep 316" not in listing, f"survivors after the timeout:\n{listing}"

    def test_streamed_exec_times_out_too(self, shared: Sandbox) -> None:
        stream = shared.exec_stream(
            ["sh", "-c", "echo started; sleep 1618 & sleep 1619"], timeout=2
        )
        output = b"".join(chunk for _, chunk in stream)
        assert output == b"started\n"
        assert stream.timed_out
        listing = self._wait_gone(shared, "sleep 16")
        assert "sleep 16" not in listing, f"survivors after the timeout:\n{listing}"


# launches that fail halfway -----------------------------------------------------------
class TestFailedLaunchLeavesNothing:
    def test_missing_image(self, backend: str) -> None:
        before = _snapshot(backend)
        with pytest.raises(sandboxer.ImageNotFound):
            # The local registry answers, and has no such repository.
            sandboxer.launch(
                backend=backend,
                image="127.0.0.1:5000/sandboxer-test/no-such-image:1",
                network="isolated",
                allow_unenforced=["non_root_user"],
            )
        assert _snapshot(backend) == before

    def test_mount_source_removed_before_start(self, backend: str, tmp_path: Path) -> None:
        source = tmp_path / "vanishing"
        source.mkdir()
        spec = sandboxer.SandboxSpec(backend=backend, mounts=[Mount(str(source), "/data")])
        source.rmdir()  # valid when checked, gone when the engine looks
        before = _snapshot(backend)
        try:
            with pytest.raises(sandboxer.SandboxError):
                sandboxer.launch(spec).destroy()
            assert _snapshot(backend) == before
            # Creating the missing path on the host (as root) is not failing cleanly.
            assert not source.exists(), "the engine re-created the mount source on the host"
        finally:
            shutil.rmtree(source, ignore_errors=True)

    def test_name_taken_leaves_the_owner_alone(self, shared: Sandbox, backend: str) -> None:
        before = _snapshot(backend)
        with pytest.raises(sandboxer.SandboxExists):
            sandboxer.launch(backend=backend, name=shared.name)
        assert _snapshot(backend) == before
        assert shared.exec(["echo", "still mine"]).stdout == b"still mine\n"


# many launches at once -----------------------------------------------------------------
def _launch_exec_destroy(backend: str, index: int) -> str:
    with sandboxer.launch(backend=backend, labels={"crowd": str(index)}) as sandbox:
        result = sandbox.exec(["echo", str(index)], timeout=120)
        assert result.stdout == f"{index}\n".encode(), result
        return sandbox.name


class TestConcurrentLaunches:
    def test_crowd_succeeds_or_fails_cleanly(self, backend: str) -> None:
        count = CONCURRENT[backend]
        before = _snapshot(backend)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
            futures = [pool.submit(_launch_exec_destroy, backend, i) for i in range(count)]
            outcomes = [f.exception(timeout=900) or f.result() for f in futures]
        elapsed = time.monotonic() - started
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(o, sandboxer.SandboxError) for o in failures), failures
        names = [o for o in outcomes if isinstance(o, str)]
        assert len(set(names)) == len(names)
        assert _snapshot(backend) == before
        print(f"{backend}: {len(names)}/{count} concurrent launches in {elapsed:.1f}s")
        # Failing cleanly is the floor; on an engine that is up, every launch should work.
        assert not failures, f"{len(failures)} of {count} failed (cleanly): {failures[:3]}"
