"""sandboxer/systemd with its systemd as PID 1 on the libvirt backend, without libvirtd:
when it boots that way, what the guest is told, what it refuses and what it reports."""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET

import pytest

from sandboxer import Requirements, Resources, SandboxSpec
from sandboxer._backend import LaunchPlan
from sandboxer._launch import make_plan
from sandboxer.backends.libvirt import (
    LibvirtBackend,
    _domain,
    _guest_config,
    _guest_scripts,
    _oci,
)
from sandboxer.backends.libvirt._refusals import refusals
from sandboxer.images import ImageConfig

SYSTEMD = "sandboxer/systemd"
# The image's own config names systemd as its command: never run as a main process.
SYSTEMD_CONFIG = ImageConfig(cmd=("/sbin/init",))
CONSENT = ["non_root_user", "capabilities", "seccomp", "pids_limit", "memory_limit"]


def plan_for(**fields: object) -> LaunchPlan:
    return make_plan(SandboxSpec(backend="libvirt", **fields))  # type: ignore[arg-type]


def _conf(plan: LaunchPlan) -> dict[str, str]:
    text = _guest_config.sandbox_conf(plan, SYSTEMD_CONFIG)
    pairs = (line.split("=", 1) for line in text.splitlines())
    return {key: " ".join(shlex.split(value)) for key, value in pairs}


def test_with_an_init_requirement_the_guest_boots_systemd() -> None:
    plan = plan_for(image=SYSTEMD, requirements=Requirements(init=True), profile="default")
    assert refusals(plan) == []
    assert _conf(plan)["SBX_SYSTEMD"] == "1"
    assert _oci.main_request(SYSTEMD_CONFIG, plan) is None  # systemd is PID 1, not a command


def test_without_one_it_runs_sandboxer_init_like_any_image() -> None:
    plan = plan_for(image=SYSTEMD, profile="default")
    assert refusals(plan) == []
    assert _conf(plan)["SBX_SYSTEMD"] == "0"
    main = _oci.main_request(SYSTEMD_CONFIG, plan)
    assert main is not None and main.argv == ("/sbin/init",)


def test_a_command_is_refused_with_the_reason() -> None:
    plan = plan_for(image=SYSTEMD, requirements=Requirements(init=True), command=["x"])
    assert any("systemd as PID 1" in reason for reason in refusals(plan))


def test_hardened_reports_what_systemd_lifts_and_needs_consent() -> None:
    plan = plan_for(image=SYSTEMD, requirements=Requirements(init=True), network="none")
    statuses = LibvirtBackend.enforcement(object.__new__(LibvirtBackend), plan)
    lifted = sorted(control for control, status in statuses.items() if not status.enforced)
    assert lifted == sorted(CONSENT)
    assert all("systemd as PID 1" in statuses[control].mechanism for control in CONSENT)
    # What still holds for every process, systemd included.
    for control in ("no_new_privileges", "read_only_root"):
        assert statuses[control].enforced


def test_the_guest_writes_and_enables_its_unit_before_systemd_starts() -> None:
    init = _guest_scripts.init_script()
    unit = _guest_scripts.SYSTEMD_UNIT
    assert unit in init
    assert f"ExecStart={_guest_scripts.OCI.sh} /.sandboxer/init switched" in unit
    for line in _guest_scripts.SYSTEMD_ACCOUNTING:
        assert line in unit.splitlines()
    assert "sysinit.target.wants" in init
    # Under no_new_privs when the profile asks, by sandboxer's own setpriv.
    assert f"{_guest_scripts.OCI.setpriv} --nnp -- $init" in init


@pytest.mark.parametrize("layout", [_guest_scripts.BUILTIN, _guest_scripts.OCI])
def test_the_shutdown_helper_and_the_init_share_their_fifo(
    layout: _guest_scripts.GuestLayout,
) -> None:
    assert _guest_scripts.STOP_FIFO in _guest_scripts.SHUTDOWN
    assert f"mkfifo -m 600 {_guest_scripts.STOP_FIFO}" in _guest_scripts.init_script(layout)


def test_the_vm_has_the_room_a_disk_images_systemd_gets() -> None:
    plan = plan_for(
        image=SYSTEMD, requirements=Requirements(init=True), resources=Resources(memory="256MiB")
    )
    boots = {
        system: _domain.Boot("vmlinuz", "initrd.img", full_system=system)
        for system in (False, True)
    }
    memory = {
        system: ET.fromstring(
            _domain.domain_xml(plan, accel="qemu", console_log="c", boot=boot)
        ).findtext("memory")
        for system, boot in boots.items()
    }
    assert memory == {False: str(256 + 128), True: str(256 + 384)}
