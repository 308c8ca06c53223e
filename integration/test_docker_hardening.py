"""The hardened profile, checked from inside a Docker sandbox by trying what it forbids."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import Sandbox


@pytest.fixture(scope="module")
def hardened() -> Iterator[Sandbox]:
    with sandboxer.launch(backend="docker", profile="hardened") as sandbox:
        yield sandbox


def _status(sandbox: Sandbox) -> dict[str, str]:
    text = sandbox.read_file("/proc/self/status").decode()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_every_control_reports_enforced(hardened: Sandbox) -> None:
    assert set(hardened.enforcement) == set(sandboxer.load_profile("hardened").controls())
    assert all(status.enforced for status in hardened.enforcement.values())


def test_no_capabilities_no_new_privileges_seccomp(hardened: Sandbox) -> None:
    status = hardened.exec(["cat", "/proc/self/status"]).stdout.decode()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"


def test_runs_as_non_root(hardened: Sandbox) -> None:
    assert hardened.exec(["id", "-u"]).stdout.strip() != b"0"


def test_root_file_system_is_read_only(hardened: Sandbox) -> None:
    result = hardened.exec(["sh", "-c", "echo x > /written"], user="0")
    assert result.exit_code != 0
    assert b"Read-only file system" in result.stderr
    assert hardened.exec(["sh", "-c", "echo x > /tmp/ok"]).exit_code == 0


def test_new_user_namespace_is_refused(hardened: Sandbox) -> None:
    result = hardened.exec(["unshare", "-U", "true"])
    assert result.exit_code != 0
    assert b"Operation not permitted" in result.stderr


def test_mount_is_refused_even_for_root(hardened: Sandbox) -> None:
    result = hardened.exec(["mount", "-t", "tmpfs", "none", "/mnt"], user="0")
    assert result.exit_code != 0
    assert b"denied" in result.stderr or b"not permitted" in result.stderr


def test_fork_bomb_stops_at_pids_limit_and_host_is_fine(hardened: Sandbox) -> None:
    bomb = "for i in $(seq 300); do sleep 20 & done 2>&1; wait"
    result = hardened.exec(["sh", "-c", bomb], timeout=60)
    assert b"can't fork" in result.stdout + result.stderr
    # The host still forks and runs programs.
    import subprocess

    assert subprocess.run(["true"], check=True).returncode == 0
    assert hardened.exec(["echo", "ok"], timeout=60).stdout == b"ok\n"


def test_engine_socket_mount_is_refused(tmp_path: object) -> None:
    with pytest.raises(sandboxer.InvalidSpec, match=r"mounts\[0\]\.source"):
        sandboxer.SandboxSpec(mounts=[sandboxer.Mount("/var/run", "/x")])
