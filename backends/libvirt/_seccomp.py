"""A profile's OCI/Docker seccomp policy compiled to a BPF program for the guest.

libseccomp (libseccomp2, on every Debian host) does the compiling, through ctypes; the
guest's bwrap then loads the program with `--seccomp FD`. The policy comes resolved for
the guest (includes/excludes already decided): default action and errno, per-rule
action and errno, argument comparisons and architectures.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import tempfile
from typing import Any

from sandboxer.backend import (
    EPERM,
    ERRNO,
    ArgFilter,
    BackendUnavailable,
    SeccompPolicy,
    SeccompRule,
    Target,
    UnsupportedFeature,
)

_FIX = "apt-get install libseccomp2"
_ATTR_OPTIMIZE = 8  # SCMP_FLTATR_CTL_OPTIMIZE (libseccomp >= 2.5); older ones ignore it
_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_COMPARISONS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@functools.cache
def _library() -> Any:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BackendUnavailable("libvirt", f"libseccomp is missing ({exc})", _FIX) from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    return lib


def available() -> bool:
    try:
        _library()
    except BackendUnavailable:
        return False
    return True


def _action(action: str, errno: int | None) -> int:
    if action == ERRNO:
        return 0x00050000 | ((EPERM if errno is None else errno) & 0xFFFF)
    if action not in _ACTIONS:
        raise UnsupportedFeature(f"seccomp action {action!r} is not supported on VMs")
    return _ACTIONS[action]


def _arguments(args: tuple[ArgFilter, ...]) -> Any:
    array = (_ArgCmp * max(1, len(args)))()
    for slot, arg in zip(array, args, strict=False):
        slot.arg = arg.index
        slot.op = _COMPARISONS[arg.op]
        slot.datum_a = arg.value
        slot.datum_b = arg.value_two
    return array


def guest_program(policy: SeccompPolicy | None, target: Target) -> bytes:
    """The policy for the guest's commands, compiled; empty when there is none."""
    if policy is None:
        return b""
    # The guest kernel's version is not known here: rules gated on minKernel are left out.
    return compile_policy(policy.resolve(target))


# Policies are frozen: a profile's program is compiled once per process.
@functools.lru_cache(maxsize=16)
def compile_policy(policy: SeccompPolicy) -> bytes:
    """The BPF program (raw sock_filter array) for a resolved policy (see `resolve`)."""
    lib = _library()
    context = lib.seccomp_init(_action(policy.default_action, policy.default_errno))
    if not context:
        raise UnsupportedFeature("libseccomp refused the policy's default action")
    try:
        # A binary search over syscall numbers instead of a linear scan: every syscall of
        # every command pays for the filter, and under TCG each BPF instruction is emulated.
        lib.seccomp_attr_set(context, _ATTR_OPTIMIZE, 2)
        for arch in policy.architectures:
            token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
            if token:  # adding the native architecture again fails harmlessly
                lib.seccomp_arch_add(context, token)
        for rule in policy.rules:
            if not (rule.includes.empty() and rule.excludes.empty()):
                raise UnsupportedFeature("the seccomp policy must be resolved before compiling")
            _add_rule(lib, context, rule)
        with tempfile.TemporaryFile() as output:
            result = lib.seccomp_export_bpf(context, output.fileno())
            if result < 0:
                raise UnsupportedFeature(f"libseccomp could not export: {os.strerror(-result)}")
            output.seek(0)
            return output.read()
    finally:
        lib.seccomp_release(context)


def _add_rule(lib: Any, context: int, rule: SeccompRule) -> None:
    action = _action(rule.action, rule.errno)
    array = _arguments(rule.args)
    for name in rule.names:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == -1:
            continue  # unknown to this libseccomp: nothing to filter (Docker does the same)
        result = lib.seccomp_rule_add_array(context, action, number, len(rule.args), array)
        if result < 0 and result != -17:  # -EEXIST: already covered
            raise UnsupportedFeature(
                f"libseccomp refused the rule for {name}: {os.strerror(-result)}"
            )
