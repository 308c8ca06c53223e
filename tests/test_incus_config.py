"""The Incus adapter's pure parts: plan -> instance request, seccomp, users, errors, framing.

No engine is touched: pylxd is imported, never connected.
"""

from __future__ import annotations

import inspect
import io
import json
import socket
import tarfile
from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer import Mount, PortMapping, SandboxSpec
from sandboxer._backend import LaunchPlan
from sandboxer._launch import make_plan
from sandboxer.backends.incus import (
    _boot,
    _config,
    _errors,
    _images,
    _network,
    _prepare,
    _refusals,
    _users,
)
from sandboxer.backends.incus._client import DEFAULT_SOCKET, Endpoint
from sandboxer.backends.incus._config import Nic
from sandboxer.backends.incus._sdk import pylxd
from sandboxer.backends.incus._websocket import BINARY, CLOSE, TEXT, WebSocket, _frame
from sandboxer.images import is_builtin

POOL = "default"


def plan(**fields: Any) -> LaunchPlan:
    return make_plan(SandboxSpec(backend="incus", **fields))


def boot_of(launch_plan: LaunchPlan) -> _boot.Boot:
    """The built-in images' init, or (any other name here) an image Incus holds."""
    if is_builtin(_images.image_name(launch_plan)):
        return _boot.builtin(launch_plan)
    return _boot.own(launch_plan, None)


def request(launch_plan: LaunchPlan, nic: Nic | None = None) -> Any:
    boot = boot_of(launch_plan)
    return _config.instance_request(launch_plan, "f" * 64, POOL, nic, True, boot)


def overrides_of(launch_plan: LaunchPlan) -> dict[str, sandboxer.ControlStatus]:
    return _config.enforcement_overrides(launch_plan, boot_of(launch_plan).init)


def raw_lines(body: dict[str, Any]) -> list[str]:
    return str(body["config"]["raw.lxc"]).splitlines()


# hardened profile --------------------------------------------------------------------
def test_hardened_security_keys() -> None:
    config = request(plan())["config"]
    assert config["security.privileged"] == "false"
    assert config["security.idmap.isolated"] == "true"
    assert config["security.nesting"] == "false"
    assert config["security.guestapi"] == "false"


def test_hardened_raw_lxc_drops_every_capability_and_sets_no_new_privs() -> None:
    lines = raw_lines(request(plan()))
    assert "lxc.cap.keep = none" in lines
    assert "lxc.no_new_privs = 1" in lines
    assert not any(line.startswith("lxc.cap.drop") for line in lines)


def test_loopback_is_raised_by_a_host_hook_in_every_sandbox() -> None:
    for profile in ("hardened", "default", "strict"):
        assert _config.LOOPBACK_HOOK in raw_lines(request(plan(profile=profile)))
    assert "nsenter --net=/proc/$LXC_PID/ns/net ip link set lo up" in _config.LOOPBACK_HOOK


def test_hardened_root_is_read_only_with_a_sized_tmpfs() -> None:
    body = request(plan())
    assert body["devices"]["root"] == {
        "type": "disk",
        "path": "/",
        "pool": POOL,
        "readonly": "true",
    }
    assert (
        "lxc.mount.entry = tmpfs tmp tmpfs rw,nosuid,nodev,size=67108864,mode=1777,create=dir 0 0"
        in raw_lines(body)
    )


def test_hardened_limits() -> None:
    config = request(plan())["config"]
    assert config["limits.processes"] == "128"
    assert config["limits.memory"] == str(256 * 1024**2)
    assert config["limits.memory.swap"] == "false"
    assert "limits.cpu" not in config


def test_hardened_seccomp_is_an_lxc_allow_list_in_raw_seccomp() -> None:
    config = request(plan())["config"]
    lines = config["raw.seccomp"].splitlines()
    assert lines[:3] == ["2", "allowlist errno 1", "[all]"]
    assert "clone allow [0,0,SCMP_CMP_MASKED_EQ,2114060288]" in lines
    assert "clone3 errno 38" in lines
    assert not any(line.startswith(("mount ", "io_uring", "unshare ")) for line in lines)
    assert "security.syscalls.deny" not in config


def test_request_uses_no_profiles_and_the_fingerprint() -> None:
    body = request(plan())
    assert body["profiles"] == []
    assert body["source"] == {"type": "image", "fingerprint": "f" * 64}
    assert body["type"] == "container"


# default profile and requirements ----------------------------------------------------
def test_default_profile_adds_no_controls() -> None:
    body = request(plan(profile="default"))
    lines = raw_lines(body)
    assert not any(line.startswith(("lxc.cap", "lxc.no_new_privs", "lxc.mount")) for line in lines)
    assert "raw.seccomp" not in body["config"]
    assert body["devices"]["root"]["readonly"] == "false"
    assert "limits.processes" not in body["config"]


def test_nested_lifts_capability_and_syscall_controls_and_reports_them() -> None:
    nested = plan(requirements={"nested": True})
    config = request(nested)["config"]
    assert config["security.nesting"] == "true"
    assert "raw.seccomp" not in config
    assert not any(line.startswith("lxc.cap") for line in raw_lines(request(nested)))
    overrides = overrides_of(nested)
    assert not overrides["capabilities"].enforced
    assert not overrides["seccomp"].enforced
    assert "nested" in overrides["seccomp"].mechanism


def test_no_overrides_for_a_plain_hardened_plan() -> None:
    assert overrides_of(plan()) == {}


def test_cap_add_is_kept_and_a_partial_drop_list_is_dropped() -> None:
    # From "default": the guarded profiles refuse to be loosened.
    base = sandboxer.load_profile("default")
    web = base.derive("web", cap_drop=["ALL"], cap_add=["NET_BIND_SERVICE"])
    assert "lxc.cap.keep = net_bind_service" in raw_lines(request(plan(profile=web)))
    partial = base.derive("partial", cap_drop=["CAP_SYS_ADMIN", "NET_RAW"])
    assert "lxc.cap.drop = net_raw sys_admin" in raw_lines(request(plan(profile=partial)))


def test_profile_extras_append_to_line_lists_and_set_keys_no_control_sets() -> None:
    hardened = sandboxer.load_profile("hardened")
    extra = hardened.derive(
        "extra",
        extras={
            "incus": {
                "raw.lxc": "lxc.apparmor.profile = unconfined",
                "raw.seccomp": "acct errno 1",
                "boot.autostart": False,
            }
        },
    )
    config = request(plan(profile=extra))["config"]
    assert config["raw.lxc"].endswith("\nlxc.apparmor.profile = unconfined")
    assert "lxc.cap.keep = none" in config["raw.lxc"]
    assert config["raw.seccomp"].endswith("\nacct errno 1")
    assert config["boot.autostart"] == "false"
    assert config["security.idmap.isolated"] == "true"  # the profile's isolated_ids


@pytest.mark.parametrize(
    "key", ["security.privileged", "security.nesting", "security.guestapi", "limits.memory"]
)
def test_profile_extras_that_would_override_a_control_are_refused_by_check(key: str) -> None:
    extra = sandboxer.load_profile("hardened").derive("extra", extras={"incus": {key: "true"}})
    refusals = _refusals.refusals(plan(profile=extra))
    assert any(key in refusal for refusal in refusals), refusals


def test_profile_syscall_keys_that_raw_seccomp_would_void_are_refused() -> None:
    hardened = sandboxer.load_profile("hardened")
    extra = hardened.derive("extra", extras={"incus": {"security.syscalls.deny": "x"}})
    (refusal,) = _refusals.refusals(plan(profile=extra))
    assert "security.syscalls.deny" in refusal


def test_tmpfs_path_with_spaces_is_refused() -> None:
    odd = sandboxer.load_profile("default").derive("odd", tmpfs={"/my tmp": 1024})
    (refusal,) = _refusals.refusals(plan(profile=odd))
    assert "/my tmp" in refusal


# spec fields -------------------------------------------------------------------------
def test_labels_and_env(tmp_path: Path) -> None:
    body = request(plan(labels={"team": "qa"}, env={"GREETING": "hi"}))
    config = body["config"]
    assert config["user.team"] == "qa"
    assert config["user.sandboxer.managed"] == "true"
    assert config["environment.GREETING"] == "hi"
    labels = _config.labels_from_config(config)
    assert labels["team"] == "qa" and labels["sandboxer.managed"] == "true"


def test_mounts_become_disk_devices(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    devices = request(
        plan(
            mounts=[
                Mount(str(tmp_path), "/data", read_only=True),
                Mount(str(tmp_path / "file.txt"), "/etc/app.conf"),
            ]
        )
    )["devices"]
    assert devices["mount0"] == {
        "type": "disk",
        "source": str(tmp_path),
        "path": "/data",
        "readonly": "true",
    }
    assert devices["mount1"]["readonly"] == "false"


def test_ports_become_host_bound_proxies() -> None:
    devices = request(
        plan(
            ports=[
                PortMapping(8080, 18080),
                PortMapping(53, 10053, protocol="udp"),
                PortMapping(9000, 19000, host_ip="::1"),
            ]
        )
    )["devices"]
    assert devices["port0"] == {
        "type": "proxy",
        "listen": "tcp:127.0.0.1:18080",
        "connect": "tcp:127.0.0.1:8080",
        "bind": "host",
    }
    assert devices["port1"]["listen"] == "udp:127.0.0.1:10053"
    assert devices["port2"]["listen"] == "tcp:[::1]:19000"


def test_unassigned_host_ports_are_chosen_before_the_request() -> None:
    device = request(plan(ports=[PortMapping(8080)]))["devices"]["port0"]
    assert int(device["listen"].rsplit(":", 1)[1]) > 0


@pytest.mark.parametrize(
    ("cpus", "count", "allowance"),
    [(1.0, "1", None), (2, "2", None), (1.5, "2", "150ms/100ms"), (0.25, "1", "25ms/100ms")],
)
def test_cpu_limits(cpus: float, count: str, allowance: str | None) -> None:
    config = request(plan(resources={"cpus": cpus}))["config"]
    assert config["limits.cpu"] == count
    assert config.get("limits.cpu.allowance") == allowance


def test_resources_override_the_profile() -> None:
    config = request(plan(resources={"pids": 16, "memory": "128MiB"}))["config"]
    assert config["limits.processes"] == "16"
    assert config["limits.memory"] == str(128 * 1024**2)


def test_no_nic_for_network_none_and_the_name_maps_to_loopback() -> None:
    body = request(plan())
    assert not any(d["type"] == "nic" for d in body["devices"].values())
    assert body["config"][_config.ADDRESS_KEY] == "127.0.1.1"


def test_bridge_nic_is_reserved_filtered_and_configured_by_lxc() -> None:
    nic = Nic("sandboxerbr0", "10.213.4.7/16", "10.213.0.1", reserved=True, port_isolation=True)
    body = request(plan(network="bridge"), nic)
    assert body["devices"]["eth0"] == {
        "type": "nic",
        "network": "sandboxerbr0",
        "name": "eth0",
        "ipv4.address": "10.213.4.7",
        "security.ipv4_filtering": "true",
        "security.mac_filtering": "true",
        "security.port_isolation": "true",
    }
    lines = raw_lines(body)
    assert "lxc.net.0.ipv4.address = 10.213.4.7/16 10.213.255.255" in lines
    assert "lxc.net.0.ipv4.gateway = 10.213.0.1" in lines
    assert body["config"][_config.ADDRESS_KEY] == "10.213.4.7"


def test_isolated_nic_has_an_address_but_no_route() -> None:
    nic = Nic("sbx0123456789ab", "10.214.9.9/16")
    body = request(plan(network="isolated"), nic)
    assert body["devices"]["eth0"] == {"type": "nic", "network": nic.network, "name": "eth0"}
    lines = raw_lines(body)
    assert "lxc.net.0.ipv4.address = 10.214.9.9/16 10.214.255.255" in lines
    assert not any("gateway" in line for line in lines)


def test_network_control_names_what_the_spec_chose() -> None:
    override = overrides_of(plan(ports=[PortMapping(80)]))["network"]
    assert override.enforced and "bridge" in override.mechanism


# who the processes run as, and host mounts ---------------------------------------------
def test_the_built_in_init_runs_as_the_profile_user() -> None:
    lines = raw_lines(request(plan(command=["sleep", "1"])))
    assert "lxc.init.uid = 1000" in lines and "lxc.init.gid = 1000" in lines
    assert "non_root_user" not in overrides_of(plan())


def test_a_user_name_is_resolved_against_the_built_in_accounts() -> None:
    lines = raw_lines(request(plan(user="nobody")))
    assert "lxc.init.uid = 65534" in lines and "lxc.init.gid = 65534" in lines
    with pytest.raises(sandboxer.InvalidSpec):
        request(plan(user="ghost"))


def test_no_init_user_without_a_user() -> None:
    lines = raw_lines(request(plan(profile="default")))
    assert not any(line.startswith("lxc.init") for line in lines)


def test_an_image_with_its_own_init_keeps_it_root_and_says_so() -> None:
    own = plan(image="someone/debian-systemd")
    assert not any(line.startswith("lxc.init") for line in raw_lines(request(own)))
    status = overrides_of(own)["non_root_user"]
    assert not status.enforced and "own init" in status.mechanism


def test_every_host_mount_is_remounted_nosuid_nodev(tmp_path: Path) -> None:
    mounts = [Mount(str(tmp_path), "/data"), Mount(str(tmp_path), "/ro", read_only=True)]
    hooks = [line for line in raw_lines(request(plan(mounts=mounts))) if "hook.mount" in line]
    assert hooks == [
        "lxc.hook.mount = /bin/sh -c "
        "'mount -o remount,bind,nosuid,nodev \"$LXC_ROOTFS_MOUNT\"/data'",
        "lxc.hook.mount = /bin/sh -c "
        "'mount -o remount,bind,nosuid,nodev,ro \"$LXC_ROOTFS_MOUNT\"/ro'",
    ]


@pytest.mark.parametrize("target", ["/my data", "/x'y", "/a\nlxc.hook.pre-start = x", "/$(id)"])
def test_mount_targets_a_hook_cannot_name_safely_are_refused(tmp_path: Path, target: str) -> None:
    (refusal,) = _refusals.refusals(plan(mounts=[Mount(str(tmp_path), target)]))
    assert "nosuid,nodev" in refusal


# seccomp translation (the translator itself: tests/test_seccomp.py) --------------------
def test_a_policy_incus_cannot_express_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG", "syscalls": []}))
    profile = sandboxer.load_profile("hardened").derive("logged", seccomp=path)
    override = overrides_of(plan(profile=profile))["seccomp"]
    assert not override.enforced and "cannot express" in override.mechanism


# users -------------------------------------------------------------------------------
PASSWD = "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000::/home/sandbox:/bin/sh\n"
GROUP = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("sandbox", _users.Identity(1000, 1000, "/home/sandbox")),
        ("1000", _users.Identity(1000, 1000, "/home/sandbox")),
        ("65534", _users.Identity(65534, 65534)),
        ("sandbox:nogroup", _users.Identity(1000, 65534, "/home/sandbox")),
        ("root:1000", _users.Identity(0, 1000, "/root")),
    ],
)
def test_users_resolve(user: str, expected: _users.Identity) -> None:
    assert _users.resolve(user, PASSWD, GROUP) == expected


@pytest.mark.parametrize("user", ["ghost", "sandbox:ghosts"])
def test_unknown_users_are_refused(user: str) -> None:
    with pytest.raises(sandboxer.InvalidSpec):
        _users.resolve(user, PASSWD, GROUP)


def test_numeric_users_need_no_lookup() -> None:
    assert _users.is_numeric("1000:1000")
    assert not _users.is_numeric("1000") and not _users.is_numeric("sandbox:1000")
    assert not _users.is_numeric("\u0661:0")  # ARABIC-INDIC ONE: isdigit, yet no uid


@pytest.mark.parametrize(
    "user", ["4294967295", "0:4294967295", "99999999999999999999", "sandbox:\u00b2"]
)
def test_ids_out_of_range_are_refused(user: str) -> None:
    """(uid_t)-1 is LXC's "leave as is": root."""
    with pytest.raises(sandboxer.InvalidSpec, match="user"):
        _users.resolve(user, PASSWD, GROUP)


def test_a_group_with_a_garbage_id_is_refused() -> None:
    with pytest.raises(sandboxer.InvalidSpec, match="gid of group 'bad'"):
        _users.resolve("sandbox:bad", PASSWD, "bad:x:-5:\n")


# errors ------------------------------------------------------------------------------
def test_every_pylxd_exception_is_mapped() -> None:
    classes = [
        cls
        for _, cls in inspect.getmembers(pylxd.exceptions, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == pylxd.exceptions.__name__
    ]
    mapped = {source for source, _ in _errors.MAPPING}
    assert classes and all(cls in mapped for cls in classes)


class _Response:
    def __init__(self, status: int, error: str) -> None:
        self.status_code = status
        self.content = error.encode()

    def json(self) -> dict[str, Any]:
        return {"error": self.content.decode()}


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            pylxd.exceptions.NotFound(_Response(404, "Instance not found")),
            sandboxer.SandboxNotFound,
        ),
        (pylxd.exceptions.LXDAPIException(_Response(400, "bad")), sandboxer.EngineError),
        (
            pylxd.exceptions.LXDAPIException(
                _Response(
                    500,
                    'Failed to create "instances" entry: UNIQUE constraint failed: instances.name',
                )
            ),
            sandboxer.SandboxExists,
        ),
        (pylxd.exceptions.ClientConnectionFailed("down"), sandboxer.BackendUnavailable),
        (BrokenPipeError(32, "Broken pipe"), sandboxer.BackendUnavailable),
    ],
)
def test_translation(exc: BaseException, expected: type[Exception]) -> None:
    translated = _errors.translate(exc)
    assert type(translated) is expected


# endpoint ----------------------------------------------------------------------------
def test_endpoint_defaults_to_the_local_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("ENDPOINT", "CERT", "KEY", "VERIFY"):
        monkeypatch.delenv(f"SANDBOXER_INCUS_{key}", raising=False)
    endpoint = Endpoint.from_env()
    assert endpoint == Endpoint(DEFAULT_SOCKET, None, True) and endpoint.is_local


def test_endpoint_remote_with_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXER_INCUS_ENDPOINT", "https://incus.example:8443")
    monkeypatch.setenv("SANDBOXER_INCUS_CERT", "/c.pem")
    monkeypatch.setenv("SANDBOXER_INCUS_KEY", "/k.pem")
    monkeypatch.setenv("SANDBOXER_INCUS_VERIFY", "/ca.pem")
    endpoint = Endpoint.from_env()
    assert endpoint == Endpoint("https://incus.example:8443", ("/c.pem", "/k.pem"), "/ca.pem")
    assert not endpoint.is_local and endpoint.host == "incus.example:8443"
    monkeypatch.delenv("SANDBOXER_INCUS_KEY")
    with pytest.raises(sandboxer.InvalidSpec):
        Endpoint.from_env()


# images, networks, preparation -------------------------------------------------------
def test_unified_tarball_has_metadata_templates_and_the_tree() -> None:
    with tarfile.open(fileobj=io.BytesIO(_images.unified_tarball({"sbin/init": b"x"}))) as tar:
        names = tar.getnames()
        metadata = (tar.extractfile("metadata.yaml") or io.BytesIO()).read().decode()
        inits = [m for m in tar.getmembers() if m.name == "rootfs/sbin/init"]
    assert "architecture: x86_64" in metadata and "creation_date:" in metadata
    assert "/etc/hosts:" in metadata and "templates/etc-hosts.tpl" in names
    assert "rootfs/bin/busybox" in names
    assert len(inits) == 2 and inits[-1].size == 1  # the replacement comes last and wins


def test_aliases_carry_the_image_version() -> None:
    version = _images.IMAGE_VERSION
    assert _images.alias("sandboxer/minimal").startswith(f"sandboxer/minimal:{version}.")


def test_addresses_stay_in_the_subnet_and_off_the_gateway() -> None:
    import random

    rng = random.Random(7)
    for _ in range(500):
        address = _network.random_address("10.213.0.1/24", rng)
        host = int(address.split("/")[0].rsplit(".", 1)[1])
        assert address.endswith("/24") and 2 <= host <= 254


def test_isolated_network_names_fit_an_interface_name() -> None:
    name = _network.isolated_network("x" * 63)
    assert len(name) <= 15 and name == _network.isolated_network("x" * 63)


def test_mount_points_are_made_only_over_a_read_only_root(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    mounts = [Mount(str(tmp_path), "/data"), Mount(str(tmp_path / "f"), "/etc/f.conf")]
    # The built-in image already has /tmp; another image may not.
    builtin, other = plan(mounts=mounts), plan(image="someone/else", mounts=mounts)
    in_builtin = _images.Source("f", builtin=True).exists
    assert _prepare.paths(builtin, boot_of(builtin), in_builtin) == [
        ("/data", False),
        ("/etc/f.conf", True),
    ]
    assert _prepare.paths(other, boot_of(other), _images.Source("f").exists) == [
        ("/tmp", False),
        ("/data", False),
        ("/etc/f.conf", True),
    ]
    default = plan(profile="default", mounts=mounts)
    assert _prepare.paths(default, boot_of(default), in_builtin) == []


def test_command_service_script() -> None:
    script = _prepare.command_script(("echo", "a b"), "/srv")
    assert script == b"#!/bin/sh\ncd /srv || exit 1\nexec echo 'a b'\n"


# websocket framing -------------------------------------------------------------------
def _server_frame(opcode: int, payload: bytes) -> bytes:
    # Servers send unmasked frames.
    size = len(payload)
    header = (
        bytes([0x80 | opcode, size])
        if size < 126
        else (bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big"))
    )
    return header + payload


def test_websocket_reads_messages_barriers_and_answers_pings() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(
            _server_frame(BINARY, b"hello")
            + _server_frame(0x9, b"p")
            + _server_frame(BINARY, b"x" * 300)
            + _server_frame(TEXT, b"")
        )
        websocket = WebSocket(ours)
        assert websocket.receive() == [(BINARY, b"hello"), (BINARY, b"x" * 300), (TEXT, b"")]
        pong = theirs.recv(100)
        assert pong[0] == 0x8A and pong[1] & 0x80  # a masked pong
        theirs.close()
        assert websocket.receive() == [(CLOSE, b"")]


def test_client_frames_are_masked_and_decode_back() -> None:
    payload = bytes(range(256)) * 300
    frame = _frame(BINARY, payload)
    assert frame[0] == 0x82 and frame[1] == 0x80 | 127
    size = int.from_bytes(frame[2:10], "big")
    key, body = frame[10:14], frame[14:]
    assert size == len(payload) == len(body)
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body[:64])) == payload[:64]


def test_a_chosen_host_name_sets_the_uts_name_and_the_templates_key() -> None:
    named = request(plan(name="box", hostname="web.example"))
    assert "lxc.uts.name = web.example" in raw_lines(named)
    assert named["config"][_config.HOSTNAME_KEY] == "web.example"
    default = request(plan(name="box"))  # Incus names the UTS namespace after the instance
    assert not any(line.startswith("lxc.uts.name") for line in raw_lines(default))
    assert default["config"][_config.HOSTNAME_KEY] == "box"
