"""The hardened profile, proven from inside a sandbox on every backend by trying what it forbids.

Each check below names the profile control it proves and, in `EXPECTED`, the outcome on
each backend. A backend that cannot enforce a control must say so in `sb.enforcement`
and refuse to launch the profile unless the caller consents (`allow_unenforced`); the
table marks those checks UNENFORCED and the suite then asserts the report instead.

Syscalls are tried by a small static C program (helpers/probe.c, built here with
`gcc -static`), since the built-in images have no compiler and no Python. Privilege
checks run as root inside the sandbox: even root must be refused.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer import Mount, PortMapping, Sandbox
from sandboxer._launch import make_plan
from sandboxer._registry import get_backend
from sandboxer.testing.contract import http_get, serve_http

ALL_BACKENDS = ("docker", "incus", "libvirt")
PROFILE = "hardened"

# Outcomes used in the table.
REFUSED = "refused"  # trying it fails
UNENFORCED = "unenforced"  # the backend reports it cannot enforce the control (and launch refuses)
KILLED = "killed"  # the offending process is killed, the sandbox and the host carry on
ZERO_CAPS = "0000000000000000"
NO_USERNS = "no user namespace"  # uid_map is the identity: sandbox root is host root, minus caps
ROOT_UNMAPPED = "host root not mapped"  # a user namespace whose ranges leave out host uid 0
OWN_KERNEL = "own kernel"  # a VM: the guest's uids belong to another kernel
UNCHANGED = "euid unchanged"
RAISED = "euid raised"  # the control: a setuid-root binary works without no-new-privileges
LOOPBACK_ONLY = "only the requested address"
NOT_REACHABLE = "not reachable"
OWN_ONLY = "own processes only"

SYSCALLS = (
    "keyctl",
    "add_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "init_module",
    "open_by_handle_at",
    "swapon",
    "reboot",
    "clock_settime",
    "acct",
)
# What a refused call reads as: a seccomp or capability refusal, or a call the kernel lacks.
REFUSED_ERRNOS = {"EPERM", "EACCES", "ENOSYS"}


def _same(outcome: str) -> dict[str, str]:
    return dict.fromkeys(ALL_BACKENDS, outcome)


# check -> {backend: expected outcome}. This is the document: keep it true.
EXPECTED: dict[str, dict[str, str]] = {
    "CapEff": _same(ZERO_CAPS),
    "CapBnd": _same(ZERO_CAPS),
    "NoNewPrivs": _same("1"),
    "Seccomp": _same("2"),
    "unshare -Ur": _same(REFUSED),
    "mount tmpfs": _same(REFUSED),
    "mount cgroup v1": _same(REFUSED),
    # The errno each refused syscall returns: EPERM, the profile's seccomp allowlist's
    # default (on Incus too: raw.seccomp replaces Incus' own policy).
    **{name: _same("EPERM") for name in SYSCALLS},
    "setuid binary": _same(UNCHANGED),
    "setuid, default profile (control)": _same(RAISED),
    "uid_map": {"docker": NO_USERNS, "incus": ROOT_UNMAPPED, "libvirt": OWN_KERNEL},
    "write root fs": _same(REFUSED),
    "write read-only mount": _same(REFUSED),
    "fork past pids.max": _same(REFUSED),
    "memory past memory.max": _same(KILLED),
    "engine socket": _same(NOT_REACHABLE),
    "process list": _same(OWN_ONLY),
    "published port": _same(LOOPBACK_ONLY),
}

# Hardened-profile controls each backend reports it cannot enforce (so launch refuses them
# without consent). Every check of such a control is UNENFORCED in EXPECTED.
UNENFORCED_CONTROLS: dict[str, frozenset[str]] = {
    "docker": frozenset(),
    "incus": frozenset(),
    "libvirt": frozenset(),
}

# Specs with which a backend cannot enforce some hardened controls, and those controls.
UNENFORCEABLE: dict[str, tuple[dict[str, Any], frozenset[str]]] = {
    # Nesting needs the capabilities and syscalls the profile would take away.
    "incus": ({"requirements": {"nested": True}}, frozenset({"capabilities", "seccomp"})),
}

# The profile control each check proves; None for what holds whatever the profile says.
CONTROL: dict[str, str | None] = {
    "CapEff": "capabilities",
    "CapBnd": "capabilities",
    "NoNewPrivs": "no_new_privileges",
    "Seccomp": "seccomp",
    "unshare -Ur": "seccomp",
    "mount tmpfs": "capabilities",
    "mount cgroup v1": "capabilities",
    **dict.fromkeys(SYSCALLS, "seccomp"),
    "setuid binary": "no_new_privileges",
    "setuid, default profile (control)": None,
    "uid_map": None,
    "write root fs": "read_only_root",
    "write read-only mount": None,
    "fork past pids.max": "pids_limit",
    "memory past memory.max": "memory_limit",
    "engine socket": None,
    "process list": None,
    "published port": None,
}

# Engine control sockets (and Incus' guest API) by path, including abstract socket names.
ENGINE_SOCKET = re.compile(
    r"(docker|containerd|podman)\.sock\b|containerd-shim|libvirt-sock|virt\w*d-sock"
    r"|(incus|lxd)/unix\.socket|/dev/(incus|lxd)/sock"
)
HOST_DAEMONS = {"dockerd", "containerd", "incusd", "libvirtd", "virtlogd", "qemu-system-x86"}


def expected(backend: str, check: str, sandbox: Sandbox | None = None) -> str:
    """The table's outcome; for an UNENFORCED one, also assert the sandbox reports it so."""
    outcome = EXPECTED[check][backend]
    control = CONTROL[check]
    if outcome == UNENFORCED:
        assert control in UNENFORCED_CONTROLS[backend], f"{check}: table disagrees with itself"
        if sandbox is not None:
            status = sandbox.enforcement[control]
            assert not status.enforced and status.mechanism, status
    elif sandbox is not None and control is not None and control in sandbox.enforcement:
        assert sandbox.enforcement[control].enforced, (
            f"{check} is expected {outcome!r} but {control} is reported "
            f"{sandbox.enforcement[control]}"
        )
    return outcome


def _consent(backend: str) -> list[str]:
    return sorted(UNENFORCED_CONTROLS[backend])


# fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="class")
def host_dirs(
    backend: str, tmp_path_factory: pytest.TempPathFactory, probe_binary: bytes
) -> dict[str, Path]:
    """A writable, exec-able dir for the probe (with a host-made setuid-root copy), and a
    read-only data dir; new for each backend."""
    probe_dir = tmp_path_factory.mktemp(f"probe-dir-{backend}")
    probe_dir.chmod(0o777)  # the sandbox user writes the probe here
    host_copy = probe_dir / "probe-suid-host"
    host_copy.write_bytes(probe_binary)
    os.chown(host_copy, 0, 0)
    host_copy.chmod(0o4755)
    ro_dir = tmp_path_factory.mktemp("ro-dir")
    ro_dir.chmod(0o755)
    (ro_dir / "keep.txt").write_text("host data")
    return {"probe": probe_dir, "ro": ro_dir}


def _hardened(backend: str, **fields: object) -> Sandbox:
    return sandboxer.launch(
        backend=backend, profile=PROFILE, allow_unenforced=_consent(backend), **fields
    )


@pytest.fixture(scope="class")
def hardened(backend: str, host_dirs: dict[str, Path], probe_binary: bytes) -> Iterator[Sandbox]:
    mounts = [
        Mount(str(host_dirs["probe"]), "/probe"),
        Mount(str(host_dirs["ro"]), "/ro", read_only=True),
    ]
    with _hardened(backend, mounts=mounts) as sandbox:
        # /tmp may be noexec: the probe goes into the (exec-able) mounted directory.
        sandbox.write_file("/probe/probe", probe_binary, mode=0o755)
        yield sandbox


def _setuid_copies(sandbox: Sandbox, directory: str) -> list[str]:
    """Setuid-root copies of the probe in `directory`, as the sandbox sees them.

    One is made on the host (root-owned there); root inside makes another, owned by root
    of the sandbox's own user namespace (a host-owned file shows as an unmapped uid under
    Incus, and its setuid bit never acts). Where root inside may not chmod, only the host's
    copy is tried.
    """
    _as_root(sandbox, ["sh", "-c", f"cp /probe/probe {directory}/probe-suid-inside"])
    _as_root(sandbox, ["chmod", "4755", f"{directory}/probe-suid-inside"])
    stat = f"stat -c '%u %a %n' /probe/probe-suid-host {directory}/probe-suid-inside"
    listing = _as_root(sandbox, ["sh", "-c", stat + " 2>/dev/null"]).stdout.decode()
    return [
        path
        for uid, mode, path in (line.split() for line in listing.splitlines())
        if uid == "0" and int(mode, 8) & 0o4000
    ]


def _ids(sandbox: Sandbox, path: str) -> dict[str, str]:
    result = sandbox.exec([path, "ids"])
    assert result.exit_code == 0, result
    return dict(pair.split("=") for pair in result.stdout.decode().split())


def _as_root(sandbox: Sandbox, argv: list[str], timeout: float = 60) -> sandboxer.ExecResult:
    return sandbox.exec(argv, user="0", timeout=timeout)


# the enforcement report --------------------------------------------------------------
class TestEnforcementReport:
    def test_unenforced_controls_are_the_tables(self, backend: str) -> None:
        spec = sandboxer.SandboxSpec(backend=backend, profile=PROFILE)
        report = get_backend(backend).enforcement(make_plan(spec))
        assert set(report) == set(spec.profile.controls())
        unenforced = {control for control, status in report.items() if not status.enforced}
        assert unenforced == UNENFORCED_CONTROLS[backend], report
        assert all(report[control].mechanism for control in report)

    def test_launch_refuses_unenforced_controls_without_consent(self, backend: str) -> None:
        unenforced = UNENFORCED_CONTROLS[backend]
        if not unenforced:
            with sandboxer.launch(backend=backend, profile=PROFILE) as sandbox:
                assert all(status.enforced for status in sandbox.enforcement.values())
            return
        with pytest.raises(sandboxer.UnsupportedFeature) as refused:
            sandboxer.launch(backend=backend, profile=PROFILE)
        for control in unenforced:
            assert control in str(refused.value)


class TestUnenforceableIsRefused:
    def test_refused_without_consent_and_reported_with_it(self, backend: str) -> None:
        if backend not in UNENFORCEABLE:
            assert not UNENFORCED_CONTROLS[backend]  # and every control is proven below
            return
        fields, controls = UNENFORCEABLE[backend]
        with pytest.raises(sandboxer.UnsupportedFeature) as refused:
            sandboxer.launch(backend=backend, profile=PROFILE, **fields)
        assert all(control in str(refused.value) for control in controls), refused.value
        consent = sorted(controls | UNENFORCED_CONTROLS[backend])
        with sandboxer.launch(
            backend=backend, profile=PROFILE, allow_unenforced=consent, **fields
        ) as sandbox:
            for control in controls:
                report = sandbox.enforcement[control]
                assert not report.enforced and report.mechanism, report
            if "capabilities" in controls:  # the report is honest: root keeps capabilities
                status = _as_root(sandbox, ["cat", "/proc/self/status"]).stdout.decode()
                assert f"CapBnd:\t{ZERO_CAPS}" not in status


# from inside a hardened sandbox ------------------------------------------------------
class TestHardenedFromInside:
    @pytest.fixture(scope="class")
    def status(self, hardened: Sandbox) -> dict[str, str]:
        text = _as_root(hardened, ["cat", "/proc/self/status"]).stdout.decode()
        return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}

    @pytest.fixture(scope="class")
    def syscalls(self, hardened: Sandbox) -> dict[str, str]:
        result = _as_root(hardened, ["/probe/probe", "syscalls"])
        assert result.exit_code == 0, result
        return dict(line.split("=", 1) for line in result.stdout.decode().split())

    @pytest.mark.parametrize("field", ["CapEff", "CapBnd", "NoNewPrivs", "Seccomp"])
    def test_status_of_root_inside(
        self, hardened: Sandbox, status: dict[str, str], backend: str, field: str
    ) -> None:
        want = expected(backend, field, hardened)
        if want != UNENFORCED:
            assert status[field] == want

    @pytest.mark.parametrize(
        ("check", "command"),
        [
            ("unshare -Ur", "unshare -Ur true"),
            ("mount tmpfs", "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m"),
            # The cgroup v1 release_agent escape starts with this mount.
            ("mount cgroup v1", "mkdir -p /tmp/cg && mount -t cgroup -o memory cgroup /tmp/cg"),
        ],
    )
    def test_namespace_and_mount_refused(
        self, hardened: Sandbox, backend: str, check: str, command: str
    ) -> None:
        if expected(backend, check, hardened) == UNENFORCED:
            return
        result = _as_root(hardened, ["sh", "-c", command])
        assert result.exit_code != 0, f"{check} succeeded as root inside: {result}"
        assert re.search(rb"not permitted|denied|Permission", result.stderr), result.stderr

    @pytest.mark.parametrize("name", SYSCALLS)
    def test_syscall_refused(
        self, hardened: Sandbox, syscalls: dict[str, str], backend: str, name: str
    ) -> None:
        want = expected(backend, name, hardened)
        if want == UNENFORCED:
            return
        assert syscalls[name] in REFUSED_ERRNOS, f"{name} answered {syscalls[name]} as root"
        assert syscalls[name] == want, f"{name} was refused, but with {syscalls[name]}"

    def test_setuid_binary_does_not_raise_euid(self, hardened: Sandbox, backend: str) -> None:
        if expected(backend, "setuid binary", hardened) == UNENFORCED:
            return
        copies = _setuid_copies(hardened, "/probe")  # the only writable exec-able place
        assert copies, "no setuid-root copy of the probe could be made to try"
        for path in copies:
            ids = _ids(hardened, path)
            assert ids["uid"] != "0", "the hardened user should not be root"
            assert ids["euid"] == ids["uid"], f"{path}: setuid took effect: {ids}"

    def test_uid_map(self, hardened: Sandbox, backend: str) -> None:
        want = expected(backend, "uid_map", hardened)
        uid_map = hardened.exec(["cat", "/proc/self/uid_map"]).stdout.decode().split()
        ranges = [tuple(int(n) for n in uid_map[i : i + 3]) for i in range(0, len(uid_map), 3)]
        if want == NO_USERNS:
            assert ranges == [(0, 0, 2**32 - 1)]
        elif want == ROOT_UNMAPPED:
            assert ranges and ranges != [(0, 0, 2**32 - 1)]
            assert not any(outside <= 0 < outside + count for _, outside, count in ranges), ranges
        else:
            assert want == OWN_KERNEL
            guest = hardened.exec(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()
            host = Path("/proc/sys/kernel/random/boot_id").read_bytes().strip()
            assert guest and guest != host

    def test_root_file_system_refuses_writes(self, hardened: Sandbox, backend: str) -> None:
        if expected(backend, "write root fs", hardened) == UNENFORCED:
            return
        for target in ("/sandboxer-written", "/etc/passwd", "/home/sandbox/x"):
            result = _as_root(hardened, ["sh", "-c", f"echo x >> {target}"])
            assert result.exit_code != 0, f"root wrote {target}"
            assert b"Read-only file system" in result.stderr, result.stderr
        assert hardened.exec(["sh", "-c", "echo x > /tmp/ok"]).exit_code == 0

    def test_read_only_mount_refuses_writes(
        self, hardened: Sandbox, host_dirs: dict[str, Path], backend: str
    ) -> None:
        assert expected(backend, "write read-only mount", hardened) == REFUSED
        assert hardened.exec(["cat", "/ro/keep.txt"]).stdout == b"host data"
        for command in ("echo x > /ro/new", "echo x >> /ro/keep.txt", "rm -f /ro/keep.txt"):
            result = _as_root(hardened, ["sh", "-c", command])
            assert result.exit_code != 0, f"{command!r} worked on a read-only mount"
        assert sorted(os.listdir(host_dirs["ro"])) == ["keep.txt"]
        assert (host_dirs["ro"] / "keep.txt").read_text() == "host data"

    def test_no_engine_socket_inside(self, hardened: Sandbox, backend: str) -> None:
        assert expected(backend, "engine socket", hardened) == NOT_REACHABLE
        find = "find / \\( -path /proc -o -path /sys \\) -prune -o -type s -print"
        files = _as_root(hardened, ["sh", "-c", find]).stdout.decode().split()
        unix = _as_root(hardened, ["cat", "/proc/net/unix"]).stdout.decode()
        found = [path for path in [*files, *unix.split()] if ENGINE_SOCKET.search(path)]
        assert not found, f"engine sockets reachable inside: {found}"
        paths = " ".join(sandboxer._models.ENGINE_SOCKETS)
        listing = _as_root(hardened, ["sh", "-c", f"ls -d {paths} 2>/dev/null; true"])
        assert listing.stdout == b""

    def test_only_own_processes_visible(self, hardened: Sandbox, backend: str) -> None:
        assert expected(backend, "process list", hardened) == OWN_ONLY
        # Every process but kernel threads (a VM guest's own kernel has them: kthreadd's).
        script = (
            "for p in /proc/[0-9]*; do awk '/^Name:/ { n = $2 } /^PPid:/ { p = $2 } "
            'END { if (p != 2 && n != "kthreadd") print n }\' $p/status; done 2>/dev/null'
        )
        names = _as_root(hardened, ["sh", "-c", script]).stdout.decode().split()
        assert names, "no process visible at all"
        assert not HOST_DAEMONS & set(names), names
        assert Path("/proc/self/comm").read_text().strip() not in names  # this pytest
        assert len(names) < 40, names


class TestSetuidProbeHasTeeth:
    """Without no-new-privileges the same probe does change euid: the check can fail."""

    def test_setuid_without_no_new_privileges(
        self, backend: str, host_dirs: dict[str, Path], probe_binary: bytes
    ) -> None:
        want = expected(backend, "setuid, default profile (control)")
        mounts = [Mount(str(host_dirs["probe"]), "/probe")]
        with sandboxer.launch(
            backend=backend, profile="default", user="1000:1000", mounts=mounts
        ) as sandbox:
            sandbox.write_file("/probe/probe", probe_binary, mode=0o755)
            copies = _setuid_copies(sandbox, "/bin")  # the root fs: mounts may be nosuid
            assert copies
            raised = [path for path in copies if _ids(sandbox, path)["euid"] == "0"]
        assert want == RAISED
        assert raised, f"no copy took effect: {copies}"


# limits --------------------------------------------------------------------------------
class TestLimits:
    @pytest.fixture(scope="class")
    def limited(self, backend: str) -> Iterator[Sandbox]:
        with _hardened(backend) as sandbox:
            yield sandbox

    def test_fork_past_pids_max_fails(self, limited: Sandbox, backend: str) -> None:
        if expected(backend, "fork past pids.max", limited) == UNENFORCED:
            return
        pids = sandboxer.load_profile(PROFILE).pids
        assert pids is not None
        # Short-lived children: the sandbox gets its pids back by itself.
        bomb = f"for i in $(seq {pids * 3}); do sleep 5 & done; wait"
        result = limited.exec(["sh", "-c", bomb], timeout=120)
        # busybox sh, dash (Debian's sh), or the failing program itself.
        assert re.search(rb"can't fork|Cannot fork|Resource temporarily", result.stderr), result
        assert subprocess.run(["true"], check=False).returncode == 0  # the host still forks
        time.sleep(5)
        assert limited.exec(["echo", "still here"], timeout=60).stdout == b"still here\n"

    def test_memory_hog_is_killed_host_unaffected(self, limited: Sandbox, backend: str) -> None:
        if expected(backend, "memory past memory.max", limited) == UNENFORCED:
            return
        memory = sandboxer.load_profile(PROFILE).memory
        assert memory is not None
        hog = f"x=$(head -c {memory * 3} /dev/zero | tr '\\0' a); echo survived ${{#x}}"
        result = limited.exec(["sh", "-c", hog], timeout=180)
        # Asked for three times its limit, it was killed before holding it all.
        assert b"survived" not in result.stdout, result
        assert result.exit_code in (137, -9), f"the hog was not killed: {result}"
        assert limited.exec(["echo", "still here"], timeout=60).stdout == b"still here\n"
        # The host still has room. (Not a before/after difference: the engines' other
        # tests run beside this one and move the host's free memory by more than a limit.)
        assert _host_available_memory() > 4 * memory
        assert subprocess.run(["true"], check=False).returncode == 0


def _host_available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


# ports ---------------------------------------------------------------------------------
def _host_listeners(port: int) -> list[str]:
    """Local addresses listening on `port` on the host (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(_address(address))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]  # four host-order 32-bit words
    return ":".join(b"".join(words)[i : i + 2].hex() for i in range(0, 16, 2))


class TestPorts:
    def test_port_listens_only_on_the_requested_address(self, backend: str) -> None:
        assert expected(backend, "published port") == LOOPBACK_ONLY
        with _hardened(backend, ports=[PortMapping(guest_port=8080, host_ip="127.0.0.1")]) as sb:
            host_ip, host_port = sb.ports[8080]
            assert host_ip == "127.0.0.1"
            sb.exec(["sh", "-c", "mkdir -p /tmp/www && echo up > /tmp/www/index.html"])
            serve_http(sb, 8080, "/tmp/www")
            body = http_get(f"http://127.0.0.1:{host_port}/index.html")
            assert body == b"up\n"
            assert _host_listeners(host_port) == ["127.0.0.1"]
