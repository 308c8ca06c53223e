"""A profile's OCI/Docker seccomp policy compiled to a BPF program for the guest.

libseccomp (libseccomp2, on every Debian host) does the compiling, through ctypes; the
guest's bwrap then loads the program with `--seccomp FD`. Only the policy features the
built-in profiles use are accepted: names, action, errnoRet and argument comparisons.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sandboxer._errors import BackendUnavailable, UnsupportedFeature

_FIX = "apt-get install libseccomp2"
_ERRNO_EPERM = 1
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


def _action(rule: dict[str, Any], field: str = "action") -> int:
    name = rule.get(field, "")
    if name == "SCMP_ACT_ERRNO":
        return 0x00050000 | (int(rule.get("errnoRet", _ERRNO_EPERM)) & 0xFFFF)
    if name not in _ACTIONS:
        raise UnsupportedFeature(f"seccomp action {name!r} is not supported on VMs")
    return _ACTIONS[name]


def _arguments(rule: dict[str, Any]) -> Any:
    args = rule.get("args") or []
    array = (_ArgCmp * max(1, len(args)))()
    for slot, arg in zip(array, args, strict=False):
        if arg.get("op") not in _COMPARISONS:
            raise UnsupportedFeature(f"seccomp comparison {arg.get('op')!r} is not supported")
        slot.arg = int(arg["index"])
        slot.op = _COMPARISONS[arg["op"]]
        slot.datum_a = int(arg.get("value", 0))
        slot.datum_b = int(arg.get("valueTwo", 0))
    return len(args), array


def compile_policy(policy: dict[str, Any]) -> bytes:
    """The BPF program (raw sock_filter array) for an OCI seccomp policy."""
    lib = _library()
    context = lib.seccomp_init(_action(policy, "defaultAction"))
    if not context:
        raise UnsupportedFeature("libseccomp refused the policy's default action")
    try:
        # A binary search over syscall numbers instead of a linear scan: every syscall of
        # every command pays for the filter, and under TCG each BPF instruction is emulated.
        lib.seccomp_attr_set(context, _ATTR_OPTIMIZE, 2)
        for arch in policy.get("architectures", []):
            token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
            if token:  # adding the native architecture again fails harmlessly
                lib.seccomp_arch_add(context, token)
        for rule in policy.get("syscalls", []):
            if rule.get("includes") or rule.get("excludes"):
                raise UnsupportedFeature("seccomp rules with includes/excludes are not supported")
            action = _action(rule)
            count, array = _arguments(rule)
            for name in rule.get("names", []):
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number == -1:
                    continue  # unknown to this libseccomp: nothing to filter (Docker does the same)
                result = lib.seccomp_rule_add_array(context, action, number, count, array)
                if result < 0 and result != -17:  # -EEXIST: already covered
                    raise UnsupportedFeature(
                        f"libseccomp refused the rule for {name}: {os.strerror(-result)}"
                    )
        with tempfile.TemporaryFile() as output:
            result = lib.seccomp_export_bpf(context, output.fileno())
            if result < 0:
                raise UnsupportedFeature(f"libseccomp could not export: {os.strerror(-result)}")
            output.seek(0)
            return output.read()
    finally:
        lib.seccomp_release(context)


@functools.lru_cache(maxsize=16)
def _compile_file(path: Path, mtime_ns: int) -> bytes:
    return compile_policy(json.loads(path.read_text()))


def compile_file(path: Path) -> bytes:
    """`compile_policy` for a policy file, cached while the file is unchanged."""
    return _compile_file(path, path.stat().st_mtime_ns)
