"""Named volumes on real engines, without booting anything: a foreign volume (made with the
engine's own tools) is never listed as ours nor removed, an ephemeral volume goes with its
owner, and the CLI creates, lists and removes volumes.

`gc --volumes` removes every unused volume of ours, also other sessions' (tests running at
the same time): here it runs as a dry run, or on ephemeral volumes of exited owners only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import Volume
from sandboxer._registry import get_backend


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def _incus_pool() -> str:
    return _run("incus", "profile", "device", "get", "default", "root", "pool").strip()


def _make_foreign(backend: str, name: str) -> None:
    if backend == "docker":
        _run("docker", "volume", "create", "--label", "sandboxer.managed=false", name)
    elif backend == "incus":
        _run("incus", "storage", "volume", "create", _incus_pool(), name)
    else:  # libvirt: a directory someone else put where sandboxer keeps volumes
        root = get_backend("libvirt")._volumes._root  # type: ignore[attr-defined]
        (root / name / "data").mkdir(parents=True)
        (root / name / "data" / "theirs.txt").write_text("not sandboxer's")


def _remove_foreign(backend: str, name: str) -> None:
    if backend == "docker":
        _run("docker", "volume", "rm", name)
    elif backend == "incus":
        _run("incus", "storage", "volume", "delete", _incus_pool(), name)
    else:
        root = get_backend("libvirt")._volumes._root  # type: ignore[attr-defined]
        _run("rm", "-rf", str(root / name))


@pytest.fixture
def foreign(backend: str) -> Iterator[str]:
    name = f"foreign-{uuid.uuid4().hex[:10]}"
    _make_foreign(backend, name)
    yield name
    # Still there, untouched: removed by the engine's own tools only.
    assert Volume.get(name, backend).labels.get("sandboxer.managed") != "true"
    _remove_foreign(backend, name)


def test_a_foreign_volume_is_never_ours(backend: str, foreign: str) -> None:
    mine = Volume.create(f"sbx-mine-{uuid.uuid4().hex[:10]}", backend=backend, labels={"t": "1"})
    try:
        listed = [v.name for v in Volume.list(backend)]
        assert mine.name in listed and foreign not in listed
        assert not Volume.get(foreign, backend).ours
        would_go = [
            v.name for v in sandboxer.gc_volumes(all_unused=True, backends=[backend], dry_run=True)
        ]
        assert mine.name in would_go and foreign not in would_go
        with pytest.raises(sandboxer.InvalidSpec, match="not made by sandboxer"):
            Volume.get(foreign, backend).remove()
        get_backend(backend).volumes().remove(foreign)  # the adapter refuses it as well
        with pytest.raises(sandboxer.SandboxExists):
            Volume.create(foreign, backend=backend)
    finally:
        mine.remove()
    assert mine.name not in [v.name for v in Volume.list(backend)]


_OWNER = """
import sys, sandboxer
sandboxer.Volume.create(sys.argv[1], backend=sys.argv[2], ephemeral=True)
sandboxer.Volume.create(sys.argv[1] + "-kept", backend=sys.argv[2])
"""


def test_an_ephemeral_volume_goes_with_its_owner(backend: str) -> None:
    name = f"sbx-eph-{uuid.uuid4().hex[:10]}"
    subprocess.run([sys.executable, "-c", _OWNER, name, backend], check=True, timeout=120)
    try:
        assert Volume.get(name, backend).ephemeral
        removed = [v.name for v in sandboxer.gc_volumes(backends=[backend])]
        assert name in removed and f"{name}-kept" not in removed
        assert name not in [v.name for v in Volume.list(backend)]
    finally:
        Volume(name, backend).remove()
        Volume(f"{name}-kept", backend).remove()


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandboxer.cli", *argv], capture_output=True, text=True, timeout=120
    )


def test_volume_cli_round_trip(backend: str) -> None:
    name = f"sbx-cli-{uuid.uuid4().hex[:10]}"
    created = _cli("volume", "create", "--backend", backend, "--label", "from=cli", name)
    try:
        assert (created.returncode, created.stdout) == (0, f"{name}\n"), created.stderr
        listed = _cli("volume", "ls", "--backend", backend, "--label", "from=cli", "--json")
        assert listed.returncode == 0, listed.stderr
        assert name in [v["name"] for v in json.loads(listed.stdout)]
        removed = _cli("volume", "rm", "--backend", backend, name)
        assert (removed.returncode, removed.stdout) == (0, f"{name}\n"), removed.stderr
    finally:
        Volume(name, backend).remove()
    assert name not in [v.name for v in Volume.list(backend)]
