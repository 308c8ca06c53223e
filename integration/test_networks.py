"""Named networks on real engines, from the user's side: the README's pytest example runs
as written on each engine, the CLI makes, uses, lists and removes a network, and gc
removes a leftover network of ours while a foreign one (made with the engine's own
tools) is never listed, collected nor removed as ours.

What members can and cannot reach is the engine contract's part
(sandboxer/testing/_contract_networks.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxer
from sandboxer import Network
from sandboxer._registry import get_backend
from sandboxer.backends.incus._named_networks import engine_name as incus_engine_name

README = Path(__file__).parent.parent / "README.md"


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def _cli(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandboxer.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _readme_example() -> str:
    """The Python example of the README's "Networks" section."""
    section = README.read_text().split("\n## Networks\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "README.md: no Python example under ## Networks"
    return found.group(1)


def test_the_readme_example_runs_as_written(backend: str, tmp_path: Path) -> None:
    before = {n.name for n in Network.list(backend)}
    (tmp_path / "test_readme_example.py").write_text(_readme_example())
    argv = [f"--sandbox-backend={backend}", "--sandbox-strict", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout
    # Its environment's network went with its sandboxes.
    assert {n.name for n in Network.list(backend) if n.name.startswith("sbx-env-")} <= before


_SERVE = (
    "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
)
# Until the server listens: the client may start before it does.
_FETCH = (
    "for i in $(seq 60); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {name} 8080 "
    "&& exit 0; sleep 1; done; exit 1"
)


def test_cli_network_round_trip(backend: str) -> None:
    tag = uuid.uuid4().hex[:8]
    net, web = f"sbx-cli-net-{tag}", f"sbx-cli-web-{tag}"
    created = _cli("network", "create", "--backend", backend, "--internal", "-l", "t=1", net)
    try:
        assert (created.returncode, created.stdout) == (0, f"{net}\n"), created.stderr
        started = _cli("run", "-d", "--backend", backend, "--name", web, "--network", net, "--",
                       "sh", "-c", _SERVE)  # fmt: skip
        assert started.returncode == 0, started.stderr
        fetched = _cli("run", "--backend", backend, "--net", net, "--",
                       "sh", "-c", _FETCH.format(name=web))  # fmt: skip
        assert fetched.returncode == 0 and "hello" in fetched.stdout, fetched

        listed = _cli("network", "ls", "--backend", backend, "--label", "t=1", "--json")
        assert listed.returncode == 0, listed.stderr
        (shown,) = [n for n in json.loads(listed.stdout) if n["name"] == net]
        assert shown["internal"] and shown["kept"] and shown["users"] == [web]
        busy = _cli("network", "rm", "--backend", backend, net)
        assert busy.returncode != 0 and f"in use by sandbox {web}" in busy.stderr
    finally:
        _cli("rm", "-f", web)
        removed = _cli("network", "rm", "--backend", backend, net)
    assert (removed.returncode, removed.stdout) == (0, f"{net}\n"), removed.stderr
    assert net not in [n.name for n in Network.list(backend)]


# gc and foreign networks --------------------------------------------------------------
def _engine_name(backend: str, name: str) -> str:
    """What the engine calls the network sandboxer would call `name`: a foreign network
    under that name, looking like ours, is the case that matters."""
    if backend == "incus":
        return str(incus_engine_name(name, internal=False))
    return f"sandboxer-{name}" if backend == "libvirt" else name


def _make_foreign(backend: str, name: str) -> None:
    engine = _engine_name(backend, name)
    if backend == "docker":
        _run("docker", "network", "create", "--internal", engine)
    elif backend == "incus":  # with the key Incus's adapter reads sandboxer's name from
        _run("incus", "network", "create", engine, "ipv4.address=none", "ipv6.address=none",
             f"user.sandboxer.network={name}")  # fmt: skip
    else:  # an isolated libvirt network with no <ip>: it needs no subnet
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as xml:
            xml.write(f"<network><name>{engine}</name></network>")
            xml.flush()
            _run("virsh", "-c", "qemu:///system", "net-define", xml.name)
        _run("virsh", "-c", "qemu:///system", "net-start", engine)


def _foreign_exists(backend: str, name: str) -> bool:
    engine = _engine_name(backend, name)
    argv = {
        "docker": ["docker", "network", "inspect", engine],
        "incus": ["incus", "network", "show", engine],
        "libvirt": ["virsh", "-c", "qemu:///system", "net-info", engine],
    }[backend]
    return subprocess.run(argv, capture_output=True, timeout=60).returncode == 0


def _remove_foreign(backend: str, name: str) -> None:
    engine = _engine_name(backend, name)
    if backend == "docker":
        _run("docker", "network", "rm", engine)
    elif backend == "incus":
        _run("incus", "network", "delete", engine)
    else:
        _run("virsh", "-c", "qemu:///system", "net-destroy", engine)
        _run("virsh", "-c", "qemu:///system", "net-undefine", engine)


@pytest.fixture
def foreign(backend: str) -> Iterator[str]:
    name = f"fn-{uuid.uuid4().hex[:8]}"  # short: incus and libvirt name bridges after it
    _make_foreign(backend, name)
    yield name
    assert _foreign_exists(backend, name), "a foreign network was removed"
    _remove_foreign(backend, name)


def test_a_foreign_network_is_never_ours(backend: str, foreign: str) -> None:
    assert foreign not in [n.name for n in Network.list(backend)]
    found = Network.get(foreign, backend)
    assert found.name == foreign and not found.ours
    would_go = sandboxer.gc_networks(backends=[backend], dry_run=True)
    assert foreign not in [n.name for n in would_go]
    with pytest.raises(sandboxer.InvalidSpec, match="not made by sandboxer"):
        found.remove()
    get_backend(backend).networks().remove(foreign)  # the adapter refuses it as well
    assert _foreign_exists(backend, foreign)
    refused = _cli("network", "rm", "--backend", backend, foreign)
    assert refused.returncode != 0 and "not made by sandboxer" in refused.stderr
    listed = _cli("network", "ls", "--backend", backend, "-q")
    assert listed.returncode == 0 and foreign not in listed.stdout.split()
    with pytest.raises(sandboxer.InvalidSpec, match="not made by sandboxer"):
        sandboxer.launch(backend=backend, networks=[foreign])
    with pytest.raises(sandboxer.SandboxExists):
        Network.create(foreign, backend=backend)


_OWNER = """
import sys, sandboxer
sandboxer.Network.create(sys.argv[1], backend=sys.argv[2], internal=True)
sandboxer.Network.create(sys.argv[1] + "-kept", backend=sys.argv[2], keep=True)
"""


def test_gc_removes_a_leftover_network_whose_owner_exited(backend: str, foreign: str) -> None:
    name = f"sbx-left-{uuid.uuid4().hex[:8]}"
    subprocess.run([sys.executable, "-c", _OWNER, name, backend], check=True, timeout=120)
    try:
        # A session of its own: no other test's sandboxes are swept meanwhile.
        session = f"sbx-none-{uuid.uuid4().hex[:8]}"
        swept = _cli("gc", "--backend", backend, "--session", session, "--json")
        assert swept.returncode == 0, swept.stderr
        gone = [n["name"] for n in json.loads(swept.stdout)["networks"]]
        assert name in gone and f"{name}-kept" not in gone and foreign not in gone
        left = [n.name for n in Network.list(backend)]
        assert name not in left and f"{name}-kept" in left
    finally:
        Network(name, backend).remove()
        Network(f"{name}-kept", backend).remove()
