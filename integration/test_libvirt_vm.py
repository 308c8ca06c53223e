"""What only the libvirt backend promises: its own kernel, shares read-only at every layer,
nothing left on the host afterwards, and the user network kept away from the host.

Runs on the real libvirtd (qemu:///system or SANDBOXER_LIBVIRT_URI); nothing here skips.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

import sandboxer
from sandboxer import Mount, PortMapping, SandboxState
from sandboxer._registry import get_backend
from sandboxer.backends.libvirt._backend import state_dir, uri
from sandboxer.testing.contract import http_get


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open(uri())
    yield connection
    connection.close()


def _domain_names(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains(0)}


def test_the_guest_runs_its_own_kernel() -> None:
    with sandboxer.launch(backend="libvirt") as sb:
        guest = sb.exec(["uname", "-r"]).stdout.decode().strip()
        assert guest and guest != os.uname().release
        boot_id = sb.exec(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()
        assert boot_id != Path("/proc/sys/kernel/random/boot_id").read_bytes().strip()


def test_read_only_share_refuses_writes_inside_the_guest(
    conn: libvirt.virConnect, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "keep.txt").write_text("host data")
    with sandboxer.launch(
        backend="libvirt",
        mounts=[Mount(str(tmp_path), "/ro", read_only=True)],
        labels={"test": "ro-share"},
    ) as sb:
        # Read-only in the domain (QEMU refuses writes) ...
        xml = ET.fromstring(conn.lookupByName(sb.name).XMLDesc(0))
        shares = [fs for fs in xml.iter("filesystem") if fs.find("target").get("dir") == "sbx0"]  # type: ignore[union-attr]
        assert len(shares) == 1 and shares[0].find("readonly") is not None
        # ... and mounted read-only in the guest.
        mounts = sb.exec(["cat", "/proc/mounts"]).stdout.decode().splitlines()
        options = next(line.split()[3] for line in mounts if line.split()[1] == "/ro")
        assert "ro" in options.split(",")
        assert sb.exec(["cat", "/ro/keep.txt"]).stdout == b"host data"
        for command in (
            "echo x > /ro/new",
            "echo x >> /ro/keep.txt",
            "rm /ro/keep.txt",
            "mount -o remount,rw /ro",
        ):
            result = sb.exec(["sh", "-c", command], user="0")
            assert result.exit_code != 0, f"{command!r} worked on a read-only share"
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "host data"


def test_an_exception_in_the_block_leaves_no_domain_and_no_files(
    conn: libvirt.virConnect, tmp_path: Path
) -> None:
    tmp_path.chmod(0o777)
    with (
        pytest.raises(RuntimeError, match="boom"),
        sandboxer.launch(backend="libvirt", mounts=[Mount(str(tmp_path), "/data")]) as sb,
    ):
        name = sb.name
        run_dir = state_dir() / "run" / name
        assert name in _domain_names(conn)
        assert (run_dir / "initrd.img").exists()
        assert sb.exec(["sh", "-c", "echo kept > /data/out.txt"]).exit_code == 0
        raise RuntimeError("boom")
    assert name not in _domain_names(conn)
    assert not run_dir.exists()
    assert not any(
        line.split()[4].startswith(str(run_dir))
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    assert name not in {info.name for info in get_backend("libvirt").list_sandboxes()}
    # The share's files are the user's: they stay.
    assert (tmp_path / "out.txt").read_text() == "kept\n"


def test_the_spec_command_runs_detached_and_logs_to_the_console() -> None:
    command = ["sh", "-c", "echo main says $GREETING as $(id -u); sleep 600"]
    with sandboxer.launch(backend="libvirt", command=command, env={"GREETING": "hi"}) as sb:
        deadline = time.monotonic() + 60
        while "main says hi as 1000" not in sb.logs():
            assert time.monotonic() < deadline, sb.logs()
            time.sleep(0.2)
        assert b"sleep 600" in sb.exec(["ps", "-o", "args"]).stdout


def test_stop_then_destroy(conn: libvirt.virConnect) -> None:
    sb = sandboxer.launch(backend="libvirt")
    try:
        sb.stop(timeout=30)
        assert sb.name not in _domain_names(conn)
        assert sb.state is SandboxState.STOPPED  # the VM ended; its files wait for destroy
    finally:
        sb.destroy()
    assert not (state_dir() / "run" / sb.name).exists()


def test_bridge_network_publishes_ports_but_cannot_reach_host_loopback() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            accepted.append(listener.accept())

    threading.Thread(target=accept, daemon=True).start()
    try:
        ports = [PortMapping(guest_port=8080)]
        with sandboxer.launch(backend="libvirt", network="bridge", ports=ports) as sb:
            sb.exec(["sh", "-c", "mkdir -p /tmp/www && echo up > /tmp/www/index.html"])
            assert sb.exec(["httpd", "-p", "8080", "-h", "/tmp/www"]).exit_code == 0
            host_ip, host_port = sb.ports[8080]
            assert http_get(f"http://{host_ip}:{host_port}/index.html") == b"up\n"
            # QEMU maps .2 of each user network to the host's loopback.
            for gateway in ("10.0.2.2", "10.0.3.2"):
                result = sb.exec(["sh", "-c", f"echo hi | nc -w 3 {gateway} {port}"], timeout=30)
                assert result.exit_code != 0, f"reached the host's loopback via {gateway}"
    finally:
        listener.close()
    assert not accepted


def test_output_too_big_for_the_agent_fails_clearly_and_the_sandbox_carries_on() -> None:
    with sandboxer.launch(backend="libvirt") as sb:
        with pytest.raises(sandboxer.OutputTooLarge, match="read_file"):
            sb.exec(["head", "-c", "6000000", "/dev/zero"])
        sb.exec(["sh", "-c", "head -c 6000000 /dev/zero > /tmp/big"])
        assert sb.read_file("/tmp/big") == b"\0" * 6_000_000
        assert sb.exec(["echo", "alive"]).stdout == b"alive\n"


def test_doctor_says_which_accelerator_is_used() -> None:
    checks = {check.name: check for check in get_backend("libvirt").diagnose()}
    assert checks["accelerator"].ok
    assert checks["accelerator"].detail.startswith(("KVM", "TCG"))
    assert all(check.ok for check in checks.values()), checks
