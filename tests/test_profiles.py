"""Profiles are data: the built-ins load, mean what they say, and can be derived from."""

from __future__ import annotations

from pathlib import Path

import pytest

import sandboxer
from sandboxer import CONTROLS, load_profile


def test_builtin_profiles() -> None:
    assert {"default", "hardened", "strict"} <= set(sandboxer.builtin_profiles())


def test_hardened_asks_for_every_control_but_cpu() -> None:
    hardened = load_profile("hardened")
    assert hardened.cap_drop == ("ALL",)
    assert hardened.no_new_privileges and hardened.read_only_root
    assert hardened.user == "1000:1000"
    assert hardened.pids == 128 and hardened.memory == 256 * 1024**2
    assert hardened.network == "none"
    assert "/tmp" in hardened.tmpfs
    assert set(hardened.controls()) == set(CONTROLS) - {"cpu_limit"}


def test_default_is_the_default_for_no_launch() -> None:
    assert sandboxer.SandboxSpec().profile.name == "hardened"
    assert load_profile("default").controls() == ()


def test_seccomp_policy_is_an_allow_list_leaving_out_the_dangerous_calls() -> None:
    profile = load_profile("hardened")
    policy = profile.seccomp
    assert policy is not None and policy.default_action == "SCMP_ACT_ERRNO"
    allowed = policy.allowed(profile.seccomp_target())
    assert {"read", "execve", "clone", "socket", "arch_prctl"} <= allowed
    for call in (
        "mount",
        "unshare",
        "keyctl",
        "add_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "kexec_load",
        "init_module",
        "open_by_handle_at",
        "swapon",
        "reboot",
        "clock_settime",
        "acct",
        "ptrace",
        "setns",
    ):
        assert call not in allowed


def test_profile_from_a_path_and_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[limits]\npids = 10\n[network]\nmode = "isolated"\n')
    profile = load_profile(path)
    assert (profile.name, profile.pids, profile.network) == ("mine", 10, "isolated")
    path.write_text("[limits]\nforks = 10\n")
    with pytest.raises(sandboxer.InvalidSpec, match=r"profile\.limits\.forks"):
        load_profile(path)


def test_derive_a_custom_profile() -> None:
    web = load_profile("hardened").derive("web", cap_add=["NET_BIND_SERVICE"], network="bridge")
    assert web.cap_add == ("NET_BIND_SERVICE",) and web.cap_drop == ("ALL",)
    spec = sandboxer.SandboxSpec(profile=web)
    assert spec.profile.name == "web"


def test_a_network_the_spec_asks_for_is_reported_relaxed_not_refused() -> None:
    with sandboxer.launch(backend="fake", ports=[sandboxer.PortMapping(8080)]) as sb:
        status = sb.enforcement["network"]
        assert status.enforced is False and "relaxed by the spec" in status.mechanism
        assert sb.enforcement["seccomp"].enforced is True


def test_engine_extras_are_named_and_security_keys_are_controls(tmp_path: Path) -> None:
    path = tmp_path / "extra.toml"
    path.write_text('[security]\nisolated_ids = true\n[extras.incus]\n"boot.autostart" = false\n')
    profile = load_profile(path)
    assert profile.isolated_ids and load_profile("hardened").isolated_ids
    assert profile.extras == {"incus": {"boot.autostart": "false"}}
    path.write_text('[backend.incus]\n"security.privileged" = "true"\n')
    with pytest.raises(sandboxer.InvalidSpec, match="backend"):
        load_profile(path)
