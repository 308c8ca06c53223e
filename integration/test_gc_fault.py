"""A process holding a sandbox is killed with SIGKILL: `sandboxer gc` reaps what it left.

Runs on every backend given by --backends. A container made without sandboxer (plain
docker SDK, no sandboxer labels) sits beside it and must survive every sweep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import docker
import pytest

from sandboxer._registry import get_backend
from sandboxer.images import build_rootfs_tar

# Launches one sandbox, says its name, then waits to be killed.
HOLDER = textwrap.dedent("""
    import sys, time
    import sandboxer
    backend, tag = sys.argv[1], sys.argv[2]
    sandbox = sandboxer.launch(
        backend=backend, profile="default", labels={"gc-fault": tag},
        network="isolated" if backend == "docker" else "none",
    )
    print(sandbox.name, flush=True)
    time.sleep(3600)
""")


def sandboxer_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandboxer.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


def names_on(backend: str) -> set[str]:
    return {info.name for info in get_backend(backend).list_sandboxes()}


@pytest.fixture
def foreign_container() -> Iterator[str]:
    """A container sandboxer did not make: plain SDK, no sandboxer labels."""
    client = docker.from_env()
    tag = uuid.uuid4().hex[:8]
    reference = f"sandboxer-test/foreign:{tag}"
    repository, _, version = reference.partition(":")
    client.api.import_image_from_data(build_rootfs_tar(), repository=repository, tag=version)
    container = client.containers.create(reference, ["sh"], name=f"foreign-{tag}")
    yield container.id
    container.remove(force=True)
    client.images.remove(reference, force=True)


def test_gc_reaps_the_sandbox_of_a_killed_owner(backend: str, foreign_container: str) -> None:
    tag = uuid.uuid4().hex[:8]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, backend, tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        name = holder.stdout.readline().strip()
        assert name, holder.stderr.read() if holder.stderr else "the holder said nothing"
        assert name in names_on(backend)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert name in names_on(backend)  # SIGKILL left it behind: nothing ran at exit

    started = time.monotonic()
    result = sandboxer_cli("gc", "--all-sessions", "--backend", backend, "-l", f"gc-fault={tag}")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"removed {backend}/{name} ")
    assert name not in names_on(backend)
    if backend == "docker":
        assert docker.from_env().networks.list(names=[name]) == []
    print(f"gc of one {backend} sandbox (CLI process start to exit): {elapsed:.2f}s")

    # The foreign container survives a sweep of everything, even one that takes any age.
    result = sandboxer_cli(
        "gc", "--all-sessions", "--backend", "docker", "--dry-run", "--json", "--older-than", "0"
    )
    assert result.returncode == 0, result.stderr
    assert foreign_container not in result.stdout
    assert docker.from_env().containers.get(foreign_container).status == "created"
