"""The typed seccomp policy: parsing, validation, resolving, and each backend's translation."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer._seccomp import (
    ArgFilter,
    Condition,
    SeccompPolicy,
    SeccompRule,
    Target,
    load_policy,
    parse_policy,
)
from sandboxer.backends.incus._seccomp import translate
from sandboxer.backends.libvirt import _seccomp as libvirt_seccomp

CLONE_NAMESPACES = 0x7E020000
# Calls moby's default profile denies to a sandbox without capabilities (x86-64).
MOBY_DENIED = [
    "acct",
    "add_key",
    "bpf",
    "chroot",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pidfd_getfd",
    "pivot_root",
    "process_madvise",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setdomainname",
    "sethostname",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "_sysctl",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
]
STRICT_ALSO = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp")


def policy(*rules: dict[str, Any], **top: Any) -> SeccompPolicy:
    return parse_policy({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": list(rules), **top})


# parsing -----------------------------------------------------------------------------
def test_a_rule_parses_into_the_typed_model() -> None:
    parsed = policy(
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACES, "op": "SCMP_CMP_MASKED_EQ"}],
            "includes": {"arches": ["amd64"], "caps": ["CAP_SYS_ADMIN"], "minKernel": "4.8"},
            "comment": "why",
        },
        {"name": "clone3", "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        defaultErrnoRet=1,
        architectures=["SCMP_ARCH_X86_64"],
    )
    assert parsed.default_errno == 1 and parsed.architectures == ("SCMP_ARCH_X86_64",)
    clone, clone3 = parsed.rules
    assert clone.args == (ArgFilter(0, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACES, 0),)
    assert clone.includes == Condition(frozenset({"amd64"}), frozenset({"SYS_ADMIN"}), (4, 8))
    assert clone.errno is None and clone.comment == "why"
    assert (clone3.names, clone3.errno) == (("clone3",), 38)


def test_an_errno_rule_without_errnoret_means_eperm() -> None:
    assert policy({"names": ["x"], "action": "SCMP_ACT_ERRNO"}).rules[0].errno == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"defaultAction": "SCMP_ACT_NOPE"}, "seccomp.defaultAction"),
        ({"surprise": 1}, "seccomp.surprise"),
        ({"syscalls": {}}, "seccomp.syscalls"),
        (
            {"syscalls": [{"names": ["x"], "action": "SCMP_ACT_PANIC"}]},
            "seccomp.syscalls[0].action",
        ),
        ({"syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}, "seccomp.syscalls[0].names"),
        (
            {"syscalls": [{"names": ["a b"], "action": "SCMP_ACT_ALLOW"}]},
            "seccomp.syscalls[0].names",
        ),
        (
            {"syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]},
            "seccomp.syscalls[0].errnoRet",
        ),
        (
            {"syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO", "errnoRet": -1}]},
            "seccomp.syscalls[0].errnoRet",
        ),
        (
            {"syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"op": "X"}]}]},
            "seccomp.syscalls[0].args[0].op",
        ),
        (
            {
                "syscalls": [
                    {
                        "names": ["x"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}],
                    }
                ]
            },
            "seccomp.syscalls[0].args[0].index",
        ),
        (
            {
                "syscalls": [
                    {"names": ["x"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "four"}}
                ]
            },
            "seccomp.syscalls[0].includes.minKernel",
        ),
        (
            {"syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "excludes": {"os": []}}]},
            "seccomp.syscalls[0].excludes.os",
        ),
        ({"architectures": ["x86_64"]}, "seccomp.architectures"),
        # `^...$` with match() let these through: `$` matches before a trailing newline.
        (
            {"syscalls": [{"names": ["ptrace\n"], "action": "SCMP_ACT_ALLOW"}]},
            "seccomp.syscalls[0].names",
        ),
        ({"architectures": ["SCMP_ARCH_X86_64\n"]}, "seccomp.architectures"),
        (
            {
                "syscalls": [
                    {"names": ["x"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8\n"}}
                ]
            },
            "seccomp.syscalls[0].includes.minKernel",
        ),
        (
            {"syscalls": [{"name": "x", "names": ["y"], "action": "SCMP_ACT_ALLOW"}]},
            "seccomp.syscalls[0].name",
        ),
        ({"listenerPath": "/run/x"}, "seccomp.listenerPath"),
    ],
)
def test_invalid_policies_name_the_field(change: dict[str, Any], field: str) -> None:
    data = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [], **change}
    with pytest.raises(sandboxer.InvalidSpec) as raised:
        parse_policy(data)
    assert raised.value.field == field


def test_a_profile_with_a_bad_policy_file_names_the_profile_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(sandboxer.InvalidSpec, match="not valid JSON") as raised:
        sandboxer.load_profile("hardened").derive("bad", seccomp=path)
    assert raised.value.field == "profile.security.seccomp"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"]}]}))
    with pytest.raises(sandboxer.InvalidSpec) as raised:
        load_policy(path, "profile.security.seccomp")
    assert raised.value.field == "profile.security.seccomp.syscalls[0].action"


def test_arch_map_keeps_the_x86_64_entry() -> None:
    parsed = policy(
        archMap=[
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        ]
    )
    assert parsed.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")


# resolving includes/excludes ---------------------------------------------------------
CONDITIONAL = policy(
    {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
    {"names": ["cacheflush"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
    {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    {
        "names": ["clone3"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 38,
        "excludes": {"caps": ["CAP_SYS_ADMIN"]},
    },
    {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
    {"names": ["s390_only"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
    {"names": ["old_kernels"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.0"}},
    {
        "names": ["unprivileged"],
        "action": "SCMP_ACT_ALLOW",
        "excludes": {"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]},
    },
)


@pytest.mark.parametrize(
    ("target", "names"),
    [
        (Target(), {"arch_prctl", "clone3", "unprivileged"}),
        (Target(kernel=(6, 1)), {"arch_prctl", "clone3", "ptrace", "unprivileged"}),
        (Target(kernel=(4, 4)), {"arch_prctl", "clone3", "old_kernels", "unprivileged"}),
        (Target(caps=frozenset({"SYS_ADMIN"})), {"arch_prctl", "mount"}),
        (Target(caps=frozenset({"BPF"})), {"arch_prctl", "clone3"}),
        (Target(arch="arm64"), {"cacheflush", "clone3", "s390_only", "unprivileged"}),
    ],
)
def test_resolve_keeps_the_rules_for_the_target(target: Target, names: set[str]) -> None:
    resolved = CONDITIONAL.resolve(target)
    assert {name for rule in resolved.rules for name in rule.names} == names
    assert all(rule.includes.empty() and rule.excludes.empty() for rule in resolved.rules)


def test_oci_json_round_trips() -> None:
    for name in ("hardened", "strict"):
        parsed = sandboxer.load_profile(name).seccomp
        assert parsed is not None
        assert parse_policy(json.loads(parsed.oci_json())) == parsed
        assert parsed.oci_json() is parsed.oci_json()  # serialized once
    assert parse_policy(json.loads(CONDITIONAL.oci_json())) == CONDITIONAL


# the built-in policies ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["hardened", "strict"])
def test_builtin_policies_are_allow_lists_leaving_out_what_moby_denies(name: str) -> None:
    profile = sandboxer.load_profile(name)
    assert profile.seccomp is not None
    assert profile.seccomp.default_action == "SCMP_ACT_ERRNO"
    allowed = profile.seccomp.allowed(profile.seccomp_target())
    assert len(allowed) > 300
    assert not set(MOBY_DENIED) & allowed
    assert not {"clone3", "io_uring_setup", "userfaultfd"} & allowed
    [clone3] = [rule for rule in profile.seccomp.rules if "clone3" in rule.names]
    assert (clone3.action, clone3.errno) == ("SCMP_ACT_ERRNO", 38)
    [clone] = [rule for rule in profile.seccomp.rules if rule.names == ("clone",)]
    assert clone.args == (ArgFilter(0, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACES, 0),)


@pytest.mark.parametrize("name", ["hardened", "strict"])
def test_builtin_argument_filters_hold_against_upper_bits(name: str) -> None:
    """The kernel reads these arguments as 32 bits or fewer and drops the rest, while the
    filter sees 64: a range (family > 40) passes 1<<32 | AF_VSOCK. Only EQ, which fails
    when the upper bits are set, or a mask within the low word keeps its meaning."""
    seccomp = sandboxer.load_profile(name).seccomp
    assert seccomp is not None
    for rule in seccomp.rules:
        for arg in rule.args:
            assert arg.op == "SCMP_CMP_EQ" or (
                arg.op == "SCMP_CMP_MASKED_EQ" and arg.value < 2**32
            ), (rule.names, arg)


def test_hardened_lists_socket_families_and_leaves_out_the_i386_abi() -> None:
    hardened = sandboxer.load_profile("hardened").seccomp
    assert hardened is not None
    sockets = [r.args for r in hardened.rules if r.names == ("socket",)]
    # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK: never AF_ALG, AF_VSOCK or the rarer families.
    assert {args[0].value for args in sockets} == {1, 2, 10, 16}
    # i386 socketcall takes the family in memory: libseccomp then allows socketcall
    # (SYS_SOCKET) for any family, so the i386 ABI stays out (x32 calls socket directly).
    assert hardened.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X32")


def test_strict_denies_more() -> None:
    strict = sandboxer.load_profile("strict")
    assert strict.seccomp is not None
    allowed = strict.seccomp.allowed(strict.seccomp_target())
    assert not set(STRICT_ALSO) & allowed
    sockets = [r.args for r in strict.seccomp.rules if r.names == ("socket",)]
    families = {args[0].value for args in sockets}
    assert families == {1, 2, 10}  # AF_UNIX, AF_INET, AF_INET6: no AF_NETLINK, no AF_PACKET
    devices = {0o020000, 0o060000}
    for rule in strict.seccomp.rules:
        if rule.names[0] in ("mknod", "mknodat"):
            [arg] = rule.args
            assert arg.op == "SCMP_CMP_MASKED_EQ" and arg.value == 0o170000
            assert arg.value_two not in devices
    assert strict.seccomp.architectures == ("SCMP_ARCH_X86_64",)


# Docker ------------------------------------------------------------------------------
def test_docker_gets_the_policy_json_with_its_conditions() -> None:
    from sandboxer._launch import make_plan
    from sandboxer.backends.docker._config import security_options

    plan = make_plan(sandboxer.SandboxSpec(backend="docker", profile="strict"))
    [option] = [o for o in security_options(plan) if o.startswith("seccomp=")]
    sent = json.loads(option.removeprefix("seccomp="))
    assert sent["defaultAction"] == "SCMP_ACT_ERRNO"
    assert {
        k: v
        for k, v in next(r for r in sent["syscalls"] if r["names"] == ["clone3"]).items()
        if k != "comment"
    } == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    [arch_prctl] = [r for r in sent["syscalls"] if r["names"] == ["arch_prctl"]]
    assert arch_prctl["includes"] == {"arches": ["amd64", "x32"]}


# Incus -------------------------------------------------------------------------------
def test_incus_translation_of_default_actions_errnos_and_arguments() -> None:
    result = translate(
        policy(
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": CLONE_NAMESPACES, "op": "SCMP_CMP_MASKED_EQ"}],
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}],
            },
            {"names": ["reboot"], "action": "SCMP_ACT_KILL"},
            defaultErrnoRet=1,
        ).resolve(Target())
    )
    assert result.problems == ()
    assert result.policy.splitlines() == [
        "2",
        "allowlist errno 1",
        "[all]",
        "read allow",
        "write allow",
        "clone allow [0,0,SCMP_CMP_MASKED_EQ,2114060288]",
        "clone3 errno 38",
        "personality allow [0,8,SCMP_CMP_EQ]",
        "reboot kill",
    ]


def test_incus_translation_of_a_deny_list_and_of_what_lxc_lacks() -> None:
    result = translate(
        parse_policy(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"},
                    {"names": ["bpf"], "action": "SCMP_ACT_LOG"},
                ],
            }
        )
    )
    assert result.policy.splitlines()[:4] == ["2", "denylist allow", "[all]", "ptrace errno 1"]
    assert len(result.problems) == 1 and "SCMP_ACT_LOG" in result.problems[0]


@pytest.mark.parametrize("name", ["ptrace\n", "ptrace\nread", "read allow"])
def test_incus_refuses_a_name_that_would_write_a_line_of_its_own(name: str) -> None:
    """Past parsing (a policy built in code): under an allowlist, `ptrace\n` would give
    LXC a bare `ptrace` line."""
    bad = SeccompPolicy("SCMP_ACT_ERRNO", rules=(SeccompRule((name,), "SCMP_ACT_ERRNO"),))
    with pytest.raises(sandboxer.InvalidSpec, match="not syscall names") as raised:
        translate(bad)
    assert raised.value.field == "seccomp"


def test_incus_gets_the_rules_for_its_arch_and_the_granted_caps() -> None:
    resolved = CONDITIONAL.resolve(Target(kernel=(6, 1)))
    lines = translate(resolved).policy.splitlines()
    assert "arch_prctl allow" in lines and "ptrace allow" in lines
    assert not any(line.startswith(("cacheflush", "mount", "s390_only")) for line in lines)


# libvirt -----------------------------------------------------------------------------
def _program(compiled: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("<HBBI", compiled[i : i + 8]) for i in range(0, len(compiled), 8)]


needs_libseccomp = pytest.mark.skipif(
    not libvirt_seccomp.available(), reason="libseccomp is not installed"
)


@needs_libseccomp
def test_libvirt_compiles_default_errno_rule_errno_and_arguments() -> None:
    compiled = libvirt_seccomp.compile_policy(
        policy(
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": CLONE_NAMESPACES, "op": "SCMP_CMP_MASKED_EQ"}],
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            defaultErrnoRet=13,
        )
    )
    returns = {k for code, _, _, k in _program(compiled) if code == 0x06}  # BPF_RET|BPF_K
    assert 0x7FFF0000 in returns  # allow
    assert 0x00050000 | 38 in returns  # clone3: ENOSYS
    assert 0x00050000 | 13 in returns  # the default errno
    masks = {k for code, _, _, k in _program(compiled) if code == 0x54}  # BPF_ALU|BPF_AND|K
    assert CLONE_NAMESPACES in masks


@needs_libseccomp
def test_libvirt_refuses_an_unresolved_policy_and_compiles_the_resolved_one() -> None:
    with pytest.raises(sandboxer.UnsupportedFeature, match="resolved"):
        libvirt_seccomp.compile_policy(CONDITIONAL)
    assert libvirt_seccomp.compile_policy(CONDITIONAL.resolve(Target()))


@needs_libseccomp
def test_libvirt_guest_program_for_each_builtin_profile() -> None:
    assert libvirt_seccomp.guest_program(None, Target()) == b""
    for name in ("hardened", "strict"):
        profile = sandboxer.load_profile(name)
        program = libvirt_seccomp.guest_program(profile.seccomp, profile.seccomp_target())
        assert program and len(program) % 8 == 0


# What the filter answers, installed in a child process (no privilege needed with
# no_new_privs): syscall(SYS_socket, family, SOCK_STREAM, 0) per family on argv.
_TRY_SOCKETS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
program = open(sys.argv[1], "rb").read()
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(Prog(len(program) // 8, program)), 0, 0) == 0
for family in sys.argv[2:]:
    fd = libc.syscall(ctypes.c_long(41), ctypes.c_long(int(family, 0)), 1, 0)
    print("OK" if fd >= 0 else os.strerror(ctypes.get_errno()))
"""


@needs_libseccomp
def test_libvirt_program_refuses_a_family_with_upper_bits_set(tmp_path: Path) -> None:
    """The reviewer's attack: 1<<32 | AF_VSOCK passed `family > 40`, the kernel saw 40."""
    program = tmp_path / "hardened.bpf"
    hardened = sandboxer.load_profile("hardened")
    program.write_bytes(libvirt_seccomp.guest_program(hardened.seccomp, hardened.seccomp_target()))
    families = ["0x100000028", "0x100000026", "0x100000002", "40", "2"]
    done = subprocess.run(
        [sys.executable, "-c", _TRY_SOCKETS, str(program), *families],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    eperm = os.strerror(errno.EPERM)
    assert done.stdout.split("\n")[:-1] == [eperm, eperm, eperm, eperm, "OK"]


def test_rules_are_plain_values() -> None:
    rule = SeccompRule(("read",), "SCMP_ACT_ALLOW")
    assert rule.applies_to(Target())
    assert hash(rule) == hash(SeccompRule(("read",), "SCMP_ACT_ALLOW"))
