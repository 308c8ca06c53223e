"""The seccomp allowlists, proven from inside a sandbox on every backend.

The static probe (helpers/probe.c) calls each syscall directly, as root inside, and prints
NAME=RESULT. `probe moby` covers calls Docker's (moby's) default profile denies; its
arguments make most of them read OK or a harmless argument error were they let through,
and the calls the kernel no longer has would read ENOSYS: EPERM is the policy's answer.
On Docker the same probe also runs under Docker's own default profile, and ours must
refuse everything that one refuses.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxer
from sandboxer import Mount, Sandbox
from sandboxer._labels import ownership_labels

# EPERM: the policy's default errno. ENOSYS: runc answers calls newer than its libseccomp
# knows that way (so that libc falls back), e.g. lsm_* under Docker 20.10.
REFUSED = {"EPERM", "ENOSYS"}
AT_LEAST = 40
UPPER_CASES = 6
MODES = ("moby", "strict", "threads", "syscalls", "upper")
STRICT_DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "mknod(S_IFCHR)",
    "mknodat(S_IFBLK)",
    "unshare(CLONE_NEWNS)",
    "unshare(CLONE_NEWUSER)",
    "unshare(CLONE_NEWNET)",
    "unshare(CLONE_NEWUTS)",
    "unshare(CLONE_NEWIPC)",
    "unshare(CLONE_NEWPID)",
    "unshare(CLONE_NEWCGROUP)",
    "clone(CLONE_NEWUSER)",
    "setns",
    "socket(AF_NETLINK)",
    "socket(AF_PACKET)",
)


def _launch(backend: str, profile: str, probe: bytes) -> Iterator[Sandbox]:
    with tempfile.TemporaryDirectory(prefix="sbx-seccomp-") as directory:
        Path(directory).chmod(0o777)  # the sandbox user writes the probe here
        mounts = [Mount(directory, "/probe")]
        with sandboxer.launch(backend=backend, profile=profile, mounts=mounts) as sandbox:
            # /tmp may be noexec: the probe goes into the (exec-able) mounted directory.
            sandbox.write_file("/probe/probe", probe, mode=0o755)
            yield sandbox


def probe(sandbox: Sandbox, mode: str, user: str | None = "0") -> dict[str, str]:
    """The probe's NAME=RESULT lines, run as root inside unless `user` says otherwise."""
    result = sandbox.exec(["/probe/probe", mode], user=user, timeout=120)
    assert result.exit_code == 0, result
    return dict(line.split("=", 1) for line in result.stdout.decode().split())


def assert_refused(results: dict[str, str], backend: str) -> None:
    let_through = {name: r for name, r in results.items() if r not in REFUSED}
    assert not let_through, f"{backend} let through: {let_through}"


@pytest.fixture(scope="module")
def probe32_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """helpers/probe32.c: i386 code, without a libc (the host may have no 32-bit one)."""
    out = tmp_path_factory.mktemp("probe32") / "probe32"
    flags = ["-m32", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector"]
    flags += ["-fno-pie", "-no-pie", "-O2", "-Wall", "-Werror"]
    source = Path(__file__).parent / "helpers" / "probe32.c"
    subprocess.run(["gcc", *flags, "-o", str(out), str(source)], check=True, capture_output=True)
    return out.read_bytes()


def opened_through_the_32_bit_abi(sandbox: Sandbox, probe32: bytes) -> dict[str, str]:
    """The sockets probe32 opened; a policy without the i386 ABI kills it at its first call."""
    sandbox.write_file("/probe/probe32", probe32, mode=0o755)
    result = sandbox.exec(["/probe/probe32"], user="0", timeout=120)
    results = dict(line.split("=", 1) for line in result.stdout.decode().split())
    return {name: r for name, r in results.items() if int(r) >= 0}


@pytest.fixture(scope="class")
def hardened(backend: str, probe_binary: bytes) -> Iterator[Sandbox]:
    yield from _launch(backend, "hardened", probe_binary)


@pytest.fixture(scope="class")
def strict(backend: str, probe_binary: bytes) -> Iterator[Sandbox]:
    yield from _launch(backend, "strict", probe_binary)


class TestHardened:
    def test_reported_as_an_allowlist(self, hardened: Sandbox) -> None:
        status = hardened.enforcement["seccomp"]
        assert status.enforced and "allowlist" in status.mechanism, status

    def test_calls_moby_denies_are_denied(self, hardened: Sandbox, backend: str) -> None:
        results = probe(hardened, "moby")
        assert_refused(results, backend)
        assert len(results) >= AT_LEAST
        print(f"{backend}: {len(results)} calls moby denies, all denied from inside")

    @pytest.mark.parametrize("user", ["0", None])
    def test_clone3_reads_enosys_and_threads_start(
        self, hardened: Sandbox, user: str | None
    ) -> None:
        results = probe(hardened, "threads", user=user)
        assert results == {"clone3": "ENOSYS", "pthread": "OK"}

    def test_arguments_with_upper_bits_set_are_refused(
        self, hardened: Sandbox, backend: str
    ) -> None:
        """AF_VSOCK as 1<<32 | 40 passed a `family > 40` rule, and the kernel opened it."""
        results = probe(hardened, "upper")
        assert_refused(results, backend)
        assert len(results) == UPPER_CASES

    def test_32_bit_socketcall_opens_no_refused_family(
        self, hardened: Sandbox, probe32_binary: bytes
    ) -> None:
        """libseccomp lets i386 socketcall(SYS_SOCKET) through for any family once socket
        is allowed for some: AF_VSOCK opened. hardened leaves the i386 ABI out."""
        assert not opened_through_the_32_bit_abi(hardened, probe32_binary)

    def test_shell_and_busybox_httpd_run(self, hardened: Sandbox) -> None:
        assert hardened.exec(["sh", "-c", "echo $((6 * 7))"]).stdout == b"42\n"
        serve = "mkdir -p /tmp/www && echo served > /tmp/www/index.html && "
        serve += "httpd -p 127.0.0.1:8080 -h /tmp/www && sleep 0.3 && "
        serve += "wget -qO- http://127.0.0.1:8080/"
        result = hardened.exec(["sh", "-c", serve], timeout=60)
        assert result.exit_code == 0 and result.stdout == b"served\n", result

    def test_strict_only_calls_are_hardened_s_business_too_where_moby_says(
        self, hardened: Sandbox
    ) -> None:
        results = probe(hardened, "strict")
        # hardened also leaves out ptrace & co. (moby allows them from kernel 4.8 on)...
        assert {results[name] for name in STRICT_DENIED[:4]} <= REFUSED
        # ...but leaves netlink sockets to programs that list interfaces.
        assert results["socket(AF_NETLINK)"] == "OK"


def test_the_main_command_is_filtered_too(backend: str, probe_binary: bytes) -> None:
    """Not only exec: the spec's own command (started by the engine's init) is filtered."""
    with tempfile.TemporaryDirectory(prefix="sbx-seccomp-") as directory:
        Path(directory).chmod(0o777)
        host_probe = Path(directory) / "probe"
        host_probe.write_bytes(probe_binary)
        host_probe.chmod(0o755)
        write = "/probe/probe moby > /tmp/out && /probe/probe threads >> /tmp/out"
        publish = "cp /tmp/out /probe/out.tmp && mv /probe/out.tmp /probe/out"  # whole or none
        command = ["sh", "-c", f"{write} && {publish}; exec sleep 600"]
        mounts = [Mount(directory, "/probe")]
        with sandboxer.launch(backend=backend, command=command, mounts=mounts):
            out, deadline = Path(directory) / "out", time.monotonic() + 120
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            results = dict(line.split("=", 1) for line in out.read_text().split())
    assert results.pop("clone3") == "ENOSYS" and results.pop("pthread") == "OK"
    let_through = {name: r for name, r in results.items() if r not in REFUSED}
    assert len(results) >= AT_LEAST and not let_through, let_through


class TestStrict:
    def test_denies_debugging_devices_namespaces_and_raw_sockets(
        self, strict: Sandbox, backend: str
    ) -> None:
        results = probe(strict, "strict")
        let_through = {
            name: results[name] for name in STRICT_DENIED if results[name] not in REFUSED
        }
        assert not let_through, f"{backend} let through under strict: {let_through}"
        allowed = {name: r for name, r in results.items() if name.endswith("_ok")}
        assert set(allowed.values()) == {"OK"}, allowed

    def test_threads_still_start(self, strict: Sandbox) -> None:
        assert probe(strict, "threads") == {"clone3": "ENOSYS", "pthread": "OK"}

    def test_arguments_with_upper_bits_set_are_refused(self, strict: Sandbox, backend: str) -> None:
        results = probe(strict, "upper")
        assert_refused(results, backend)
        assert len(results) == UPPER_CASES

    def test_32_bit_socketcall_opens_no_refused_family(
        self, strict: Sandbox, probe32_binary: bytes
    ) -> None:
        assert not opened_through_the_32_bit_abi(strict, probe32_binary)


class TestNeverWeakerThanDockersDefault:
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> str:
        return "docker"

    @pytest.fixture(scope="class")
    @classmethod
    def under_docker_default(cls, hardened: Sandbox) -> dict[str, str]:
        """The probe in a plain container from the same image, under Docker's default
        profile (no seccomp option), with the same capabilities (none) and user (root)."""
        import docker

        client = docker.from_env()
        try:
            image = client.containers.get(hardened.id).image
            with tempfile.TemporaryDirectory(prefix="sbx-seccomp-") as directory:
                probe_path = Path(directory) / "probe"
                probe_path.write_bytes(hardened.read_file("/probe/probe"))
                probe_path.chmod(0o755)
                container = client.containers.create(
                    image.id,
                    ["sh", "-c", f"for m in {' '.join(MODES)}; do /probe/probe $m; done"],
                    user="0",
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges:true"],
                    network_mode="none",
                    labels=ownership_labels(),
                    mounts=[docker.types.Mount("/probe", directory, type="bind", read_only=True)],
                )
                try:
                    container.start()
                    assert container.wait(timeout=120)["StatusCode"] == 0
                    output = container.logs(stdout=True, stderr=False).decode()
                finally:
                    container.remove(force=True)
        finally:
            client.close()
        return dict(line.split("=", 1) for line in output.split())

    def test_ours_refuses_all_that_dockers_default_refuses(
        self, hardened: Sandbox, under_docker_default: dict[str, str]
    ) -> None:
        ours = {}
        for mode in MODES:
            ours.update(probe(hardened, mode))
        assert set(ours) == set(under_docker_default)
        weaker = {
            name: (ours[name], theirs)
            for name, theirs in under_docker_default.items()
            if theirs in REFUSED and ours[name] not in REFUSED
        }
        assert not weaker, f"ours lets through what Docker's default refuses: {weaker}"
        stricter = sorted(
            name
            for name, theirs in under_docker_default.items()
            if theirs not in REFUSED and ours[name] in REFUSED
        )
        print(f"refused by ours, let through by Docker's default: {stricter}")
