"""Bad input fails with InvalidSpec naming the field, before any engine is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer import InvalidSpec, Mount, PortMapping, SandboxSpec, load_profile
from sandboxer._models import ENGINE_SOCKETS, mount_refusal
from sandboxer.testing import FakeBackend


def _spec_error(**fields: Any) -> sandboxer.InvalidSpec:
    with pytest.raises(sandboxer.InvalidSpec) as info:
        SandboxSpec(**fields)
    return info.value


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda d: Mount(d, "relative/path"), "Mount.target"),
        (lambda d: Mount(d, "/"), "Mount.target"),
        (lambda d: Mount(d, "/proc/x"), "Mount.target"),
        (lambda d: Mount(d + "/missing", "/data"), "Mount.source"),
        (lambda d: PortMapping(guest_port=0), "PortMapping.guest_port"),
        (lambda d: PortMapping(guest_port=65536), "PortMapping.guest_port"),
        (lambda d: PortMapping(guest_port=80, host_port=70000), "PortMapping.host_port"),
        (lambda d: PortMapping(guest_port=80, host_ip="localhost"), "PortMapping.host_ip"),
        (lambda d: PortMapping(guest_port=80, protocol="sctp"), "PortMapping.protocol"),
        (lambda d: sandboxer.Resources(memory="abc"), "Resources.memory"),
        (lambda d: sandboxer.Resources(cpus=-1), "Resources.cpus"),
        (lambda d: sandboxer.Resources(pids=0), "Resources.pids"),
        (lambda d: sandboxer.Requirements(kind="unikernel"), "Requirements.kind"),
        (lambda d: sandboxer.Requirements(max_start_seconds=0), "Requirements.max_start_seconds"),
    ],
)
def test_value_classes_name_the_field(tmp_path: Path, make: Any, field: str) -> None:
    with pytest.raises(sandboxer.InvalidSpec) as info:
        make(str(tmp_path))
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"profile": "no-such-profile"}, "profile"),
        ({"command": []}, "command"),
        ({"workdir": "/proc/self"}, "workdir"),
        ({"workdir": "relative"}, "workdir"),
        ({"image": ""}, "image"),
        ({"image": "images/debian.qcow2"}, "image"),
        ({"network": "host"}, "network"),
        ({"name": "-bad"}, "name"),
        ({"env": {"1BAD": "x"}}, "env['1BAD']"),
        ({"labels": {"sandboxer.owner-pid": "1"}}, "labels['sandboxer.owner-pid']"),
        ({"ports": [PortMapping(80, 8080), PortMapping(81, 8080)]}, "ports[1].host_port"),
        ({"ports": [PortMapping(80), PortMapping(80)]}, "ports[1].guest_port"),
        ({"ports": [PortMapping(80)], "network": "none"}, "ports"),
        ({"allow_unenforced": ["teleportation"]}, "allow_unenforced"),
        ({"resources": {"memory": "lots"}}, "Resources.memory"),
    ],
)
def test_spec_fields_name_the_field(fields: dict[str, Any], field: str) -> None:
    assert _spec_error(**fields).field == field


@pytest.mark.parametrize("source", ["/", "/etc", "/proc", "/sys", "/dev", "/var/run", "/run"])
def test_hardened_refuses_host_paths_that_hand_over_the_host(source: str) -> None:
    error = _spec_error(mounts=[Mount(source, "/x")])
    assert error.field == "mounts[0].source"


@pytest.mark.parametrize("socket", ENGINE_SOCKETS)
def test_hardened_refuses_every_engine_socket(socket: str) -> None:
    # Checked on the path itself: the socket need not exist on this host for the rule.
    assert mount_refusal(load_profile("hardened"), socket) is not None
    assert mount_refusal(load_profile("strict"), socket) is not None
    assert mount_refusal(load_profile("default"), socket) is None


def test_default_profile_allows_what_hardened_refuses() -> None:
    SandboxSpec(profile="default", mounts=[Mount("/etc", "/host-etc", read_only=True)])


def test_mount_target_twice(tmp_path: Path) -> None:
    error = _spec_error(mounts=[Mount(str(tmp_path), "/a"), Mount(str(tmp_path), "/a/")])
    assert error.field == "mounts[1].target"


def test_invalid_spec_is_a_value_error() -> None:
    assert issubclass(sandboxer.InvalidSpec, ValueError)
    assert issubclass(sandboxer.InvalidSpec, sandboxer.SandboxError)


def test_bad_launch_touches_no_engine(tmp_path: Path) -> None:
    before = dict(FakeBackend.sandboxes)
    with pytest.raises(sandboxer.InvalidSpec):
        sandboxer.launch(backend="fake", mounts=[Mount(str(tmp_path / "gone"), "/data")])
    with pytest.raises(sandboxer.InvalidSpec):
        sandboxer.launch(backend="fake", resources={"memory": "abc"})
    assert FakeBackend.sandboxes == before


def test_parsing_docker_style_flags(tmp_path: Path) -> None:
    mount = Mount.parse(f"{tmp_path}:/data:ro")
    assert (mount.target, mount.read_only) == ("/data", True)
    assert PortMapping.parse("8080") == PortMapping(8080)
    assert PortMapping.parse("9000:80") == PortMapping(80, 9000)
    assert PortMapping.parse("0.0.0.0:9000:80/udp") == PortMapping(80, 9000, "0.0.0.0", "udp")
    with pytest.raises(sandboxer.InvalidSpec):
        Mount.parse("nocolon")


def test_sizes() -> None:
    assert sandboxer.Resources(memory="256MiB").memory == 256 * 1024**2
    assert sandboxer.Resources(memory="256m").memory == 256 * 1024**2
    assert sandboxer.Resources(memory="1GB").memory == 10**9
    assert sandboxer.Resources(memory=4096).memory == 4096


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "web\n"),
        ("user", "x; $(id)"),
        ("user", "1000\n"),
        ("user", "-1000"),
        ("env", {"A\n": "1"}),
    ],
)
def test_values_with_control_characters_or_shell_syntax_are_refused(
    field: str, value: object
) -> None:
    with pytest.raises(InvalidSpec, match=field):
        SandboxSpec(**{field: value})


def test_check_returns_a_successful_result_and_raises_on_failure() -> None:
    ok = sandboxer.ExecResult(exit_code=0, stdout=b"x", stderr=b"", timed_out=False, duration=0.1)
    assert ok.check() is ok
    failed = sandboxer.ExecResult(
        exit_code=3, stdout=b"", stderr=b"a" * 5000 + b"boom", timed_out=False, duration=0.1
    )
    with pytest.raises(sandboxer.CommandFailed, match="code 3") as caught:
        failed.check()
    assert caught.value.result is failed
    assert str(caught.value).endswith("boom") and len(str(caught.value)) < 2200
    timed_out = sandboxer.ExecResult(
        exit_code=-1, stdout=b"", stderr=b"", timed_out=True, duration=1.0
    )
    with pytest.raises(sandboxer.CommandFailed, match="timed out"):
        timed_out.check()


def test_exec_timeout_is_a_timeout_error() -> None:
    error = sandboxer.ExecTimeout(("sleep", "9"), 1.0, b"", b"")
    assert isinstance(error, TimeoutError) and isinstance(error, sandboxer.SandboxError)
