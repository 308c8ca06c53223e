"""What only the libvirt backend promises: its own kernel, shares read-only at every layer,
nothing left on the host afterwards, the user network kept away from the host, and OCI
images booted from a cached disk under sandboxer's own kernel and init.

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
from helpers.images import (
    APP_ENV,
    APP_UID,
    APP_WORKDIR,
    MARKER,
    SETUID_ID,
    PushedImages,
    base_in_docker,
    build_and_push,
)
from helpers.registry import Registry

import sandboxer
from sandboxer import Mount, PortMapping, SandboxState
from sandboxer._registry import get_backend
from sandboxer.backends.libvirt._backend import state_dir, uri
from sandboxer.testing.contract import http_get

# An image with symlinks planted where a sandbox writes (absolute and relative ones that
# lead out of /srv/drop, one at a file the guest's init writes) and where the guest mounts
# its own file systems (/run at sandboxer's settings).
LINKS_DOCKERFILE = """FROM {base} AS tree
RUN mkdir -p /var/lib/planted /srv/drop && chmod 1777 /var/lib/planted /srv/drop \\
 && ln -s /var/lib/planted /srv/drop/abs && ln -s ../../../../../var/lib/planted /srv/drop/rel \\
 && ln -s /etc/hostname /srv/drop/hostname && rm -rf /run && ln -s /.sandboxer/etc /run
FROM scratch
COPY --from=tree / /
"""
# ... and one whose /tmp (a tmpfs path of the hardened profile) leads to the cgroups' parent.
TMP_LINK_DOCKERFILE = """FROM {base}
RUN rm -rf /tmp && ln -s /sys/fs /tmp
"""
HOST_PLANTED = Path("/var/lib/planted")


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


def test_output_beyond_the_agents_message_limit_streams_whole() -> None:
    # qemu-ga returned at most ~3 MiB per exec; the command service streams any amount.
    with sandboxer.launch(backend="libvirt") as sb:
        assert sb.exec(["head", "-c", "6000000", "/dev/zero"]).stdout == b"\0" * 6_000_000
        sb.exec(["sh", "-c", "head -c 6000000 /dev/zero > /tmp/big"])
        assert sb.read_file("/tmp/big") == b"\0" * 6_000_000
        assert sb.exec(["echo", "alive"]).stdout == b"alive\n"


def test_doctor_says_which_accelerator_is_used() -> None:
    checks = {check.name: check for check in get_backend("libvirt").diagnose()}
    assert checks["accelerator"].ok
    assert checks["accelerator"].detail.startswith(("KVM", "TCG"))
    assert all(check.ok for check in checks.values()), checks


# OCI images -------------------------------------------------------------------------------
def _wait_for_file(sb: sandboxer.Sandbox, path: str) -> bytes:
    deadline = time.monotonic() + 60
    while True:
        result = sb.exec(["cat", path], user="0")
        if result.exit_code == 0:
            return result.stdout
        assert time.monotonic() < deadline, sb.logs()
        time.sleep(0.2)


def test_sandboxer_debian_runs_python3_as_the_sandbox_user_on_a_read_only_root(
    conn: libvirt.virConnect,
) -> None:
    with sandboxer.launch(image="sandboxer/debian", backend="libvirt") as sb:  # hardened
        result = sb.exec(["python3", "-c", "import os; print(1, os.getuid(), os.getgid())"])
        assert (result.exit_code, result.stdout) == (0, b"1 1000 1000\n"), result.stderr
        assert b"Debian GNU/Linux 12" in sb.read_file("/usr/lib/os-release")
        assert sb.exec(["uname", "-r"]).stdout.decode().strip() != os.uname().release
        for user in (None, "0"):
            denied = sb.exec(["sh", "-c", "touch /usr/new || touch /new"], user=user)
            assert denied.exit_code != 0 and b"Read-only file system" in denied.stderr
        sb.write_file("/tmp/note", b"writable tmpfs")
        assert sb.read_file("/tmp/note") == b"writable tmpfs"
        assert all(status.enforced for status in sb.enforcement.values()), sb.enforcement
        # The disk is the image store's, read-only for the guest and shared between guests.
        xml = ET.fromstring(conn.lookupByName(sb.name).XMLDesc(0))
        disks = list(xml.iter("disk"))
        assert len(disks) == 1 and disks[0].find("readonly") is not None
        # Sandboxer's own tools sit read-only beside the image, never in it.
        tools = sb.exec(["sh", "-c", "touch /.sandboxer/x"], user="0")
        assert tools.exit_code != 0


def _push(registry: Registry, repository: str, dockerfile: str) -> str:
    base, _ = base_in_docker()
    files = {"Dockerfile": dockerfile.format(base=base)}
    digest = build_and_push(registry, repository, "1", files)
    return f"{registry.host}/{repository}@{digest}"


def test_a_write_through_a_link_planted_in_the_image_stays_in_the_image(
    local_registry: Registry,
) -> None:
    image = _push(local_registry, "sandboxer-test/libvirt-links", LINKS_DOCKERFILE)
    assert not HOST_PLANTED.exists()
    with sandboxer.launch(
        image=image, backend="libvirt", profile="default", user="1000:1000"
    ) as sb:
        sb.write_file("/srv/drop/abs/through-abs", b"A")
        sb.write_file("/srv/drop/rel/through-rel", b"R")
        listing = sb.exec(["ls", "/var/lib/planted"]).stdout.decode().split()
        assert sorted(listing) == ["through-abs", "through-rel"]
        # A link at a file the guest's init writes reads the guest's own, not the host's.
        assert sb.exec(["cat", "/srv/drop/hostname"]).stdout.decode().strip() == sb.name
    assert not HOST_PLANTED.exists()
    # The image's /run link did not lead the guest's /run over sandboxer's settings:
    # hardened holds in full.
    with sandboxer.launch(image=image, backend="libvirt") as sb:
        status = sb.exec(["grep", "-E", "^(Uid|NoNewPrivs|Seccomp|CapBnd):", "/proc/self/status"])
        fields = dict(line.split(":\t", 1) for line in status.stdout.decode().splitlines())
        assert fields["Uid"].split()[0] == "1000" and fields["NoNewPrivs"] == "1"
        assert fields["Seccomp"] == "2" and int(fields["CapBnd"], 16) == 0


def test_a_tmpfs_path_the_image_links_to_a_system_path_is_refused(
    local_registry: Registry,
) -> None:
    image = _push(local_registry, "sandboxer-test/libvirt-tmp-link", TMP_LINK_DOCKERFILE)
    labels = {"test": "tmp-link-refused"}
    with pytest.raises(sandboxer.EngineError, match="refusing to mount on /tmp"):
        sandboxer.launch(image=image, backend="libvirt", labels=labels)
    left = get_backend("libvirt").list_sandboxes()
    assert not [info for info in left if info.labels.get("test") == labels["test"]]


def test_entrypoint_cmd_env_workdir_and_user_of_an_image_are_honoured(
    pushed_images: PushedImages,
) -> None:
    with sandboxer.launch(image=pushed_images.app, backend="libvirt", profile="default") as sb:
        # ENTRYPOINT with CMD as its arguments, as the image's User in its WorkingDir.
        marker = _wait_for_file(sb, MARKER).decode()
        assert marker == f"args=sleep infinity uid={APP_UID} pwd={APP_WORKDIR} mode=test\n"
        probe = "echo $(id -u) $(pwd) $APP_MODE; echo $APP_NOTE"
        result = sb.exec(["sh", "-c", probe])
        assert result.stdout.decode() == f"{APP_UID} {APP_WORKDIR} test\n{APP_ENV['APP_NOTE']}\n"
        # The caller's settings win over the image's.
        own = sb.exec(["sh", "-c", probe], env={"APP_MODE": "mine"}, workdir="/", user="0")
        assert own.stdout.decode().splitlines()[0] == "0 / mine"
        # The setuid bit survived the conversion to a disk (no no_new_privs here) ...
        assert sb.exec([SETUID_ID, "-u"]).stdout == b"0\n"
    # ... and under hardened no_new_privs keeps it from raising anything.
    with sandboxer.launch(image=pushed_images.app, backend="libvirt") as sb:
        assert sb.exec([SETUID_ID, "-u"]).stdout == b"1000\n"
        assert (
            sb.exec(["sh", "-c", "echo $(id -u) $(pwd)"]).stdout == f"1000 {APP_WORKDIR}\n".encode()
        )
