"""The libvirt guest's command service (backends/libvirt/guest-service) on a real VM:
streams both ways, signals to the process group, SIGKILL through the command's cgroup,
terminals, and the profile holding for every started process — shown by attacking it.
The generic spawn/pty contract (sandboxer/testing/_contract_process.py) runs here too."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import Sandbox
from sandboxer.testing._contract_process import PATIENCE, alive, eventually, read_until, type_until

ATTACK = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
static const char *result(int rc) { return rc < 0 ? strerrorname_np(errno) : "OK"; }
int main(void) {
    printf("isatty=%d\n", isatty(0));
    printf("setuid0=%s\n", result(setuid(0)));
    printf("setresuid0=%s\n", result(setresuid(0, 0, 0)));
    printf("sysctl=%s\n", result(open("/proc/sys/kernel/sysrq", O_WRONLY)));
    printf("cgroup=%s\n", result(open("/sys/fs/cgroup/cgroup.procs", O_WRONLY)));
    printf("bounding_sys_admin=%d\n", prctl(PR_CAPBSET_READ, 21 /* CAP_SYS_ADMIN */));
    printf("uid=%d\neuid=%d\n", getuid(), geteuid());
    return 0;
}
"""


@pytest.fixture(scope="module")
def attack_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the attack: apt-get install -y gcc libc6-dev"
    directory = tmp_path_factory.mktemp("attack")
    (directory / "attack.c").write_text(ATTACK)
    out = directory / "attack"
    build = [gcc, "-static", "-O2", "-o", str(out), str(directory / "attack.c")]
    subprocess.run(build, check=True, capture_output=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def vm(attack_binary: bytes) -> Iterator[Sandbox]:
    with sandboxer.launch(backend="libvirt", profile="hardened") as sandbox:
        sandbox.write_file("/tmp/attack", attack_binary, mode=0o755)
        yield sandbox


def test_output_arrives_while_it_runs_and_stdin_streams(vm: Sandbox) -> None:
    with vm.spawn(["sh", "-c", "echo first; while read -r line; do echo got $line; done"]) as p:
        read_until(p, b"first\n")  # the command is still waiting for input
        assert p.running
        for word in (b"one", b"two"):
            p.write(word + b"\n")
            read_until(p, b"got " + word)
        p.close_stdin()
        assert p.wait(timeout=PATIENCE).exit_code == 0


def test_a_signal_reaches_the_command(vm: Sandbox) -> None:
    script = 'trap "echo caught; exit 7" USR1; echo ready; while :; do sleep 1; done'
    with vm.spawn(["sh", "-c", script]) as p:
        read_until(p, b"ready")
        p.kill(signal.SIGUSR1)
        result = p.wait(timeout=PATIENCE)
    assert result.exit_code == 7 and b"caught" in result.stdout, result


def test_sigkill_reaches_a_daemon_in_a_session_of_its_own(vm: Sandbox) -> None:
    # setsid: the daemon leaves the command's process group; its cgroup still holds it.
    script = "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!; sleep 600"
    with vm.spawn(["sh", "-c", script]) as p:
        daemon = int(read_until(p, b"\n").split()[0])
        assert alive(vm, daemon)
        p.kill()
        assert p.wait(timeout=PATIENCE).exit_code != 0
    assert eventually(lambda: not alive(vm, daemon))


def test_a_timeout_kills_the_tree(vm: Sandbox) -> None:
    with vm.spawn(["sh", "-c", "sleep 600 & echo $!; wait"], timeout=2) as p:
        child = int(read_until(p, b"\n").split()[0])
        assert p.wait(timeout=PATIENCE).timed_out
    assert eventually(lambda: not alive(vm, child))


def test_a_terminal_is_a_tty_that_resizes(vm: Sandbox) -> None:
    with vm.pty(["sh"], size=(24, 80)) as terminal:
        terminal.write(b"[ -t 0 ] && echo is-a-tty; stty size\n")
        type_until(terminal, b"24 80")
        terminal.resize(40, 132)
        terminal.write(b"stty size\n")
        type_until(terminal, b"40 132")
        terminal.write(b"exit 3\n")
        assert terminal.wait(timeout=PATIENCE) == 3


@pytest.mark.parametrize("on_terminal", [False, True])
def test_a_started_process_cannot_regain_root(vm: Sandbox, on_terminal: bool) -> None:
    if on_terminal:
        with vm.pty(["/tmp/attack"]) as terminal:
            shown = type_until(terminal, b"euid=1000")
            terminal.wait(timeout=PATIENCE)
        report = shown.decode().replace("\r", "")
    else:
        with vm.spawn(["/tmp/attack"]) as p:
            report = p.wait(timeout=PATIENCE).stdout.decode()
    lines = dict(line.split("=", 1) for line in report.splitlines() if "=" in line)
    assert lines["isatty"] == ("1" if on_terminal else "0"), report
    assert lines["setuid0"] == "EPERM" and lines["setresuid0"] == "EPERM", report
    assert lines["sysctl"] in ("EACCES", "EROFS", "EPERM"), report
    assert lines["cgroup"] in ("EACCES", "EROFS", "EPERM"), report
    assert lines["uid"] == "1000" and lines["euid"] == "1000", report
    assert lines["bounding_sys_admin"] == "0", report
    # No capability left in the bounding set to gain by any exec.
    status = vm.exec(["sh", "-c", "grep -E 'Cap(Bnd|Eff|Prm)|NoNewPrivs|Seccomp:' /proc/$$/status"])
    assert b"CapBnd:\t0000000000000000" in status.stdout, status
    assert b"NoNewPrivs:\t1" in status.stdout and b"Seccomp:\t2" in status.stdout, status


def test_the_service_and_its_channel_stay_root_only(vm: Sandbox) -> None:
    listing = vm.exec(["sh", "-c", "ls -ln /dev/vport*"]).stdout.decode().splitlines()
    assert listing and all(line.startswith("crw-------") for line in listing), listing
    assert all(line.split()[2:4] == ["0", "0"] for line in listing), listing


def test_exec_streams_more_than_the_agents_limit(vm: Sandbox) -> None:
    size = 5 * 1024 * 1024
    result = vm.exec(["head", "-c", str(size), "/dev/zero"], timeout=PATIENCE)
    assert len(result.stdout) == size
    result = vm.exec(["wc", "-c"], stdin=b"x" * size, timeout=PATIENCE)
    assert result.stdout.strip() == str(size).encode()
