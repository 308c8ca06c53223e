"""`probe` (fast: is libvirt there?) and `diagnose` (everything `sandboxer doctor` shows)."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sandboxer.backend import Availability, Check, CheckColumn

from ._accel import TCG, AcceleratorChooser, kvm_offered
from ._errors import FIX
from ._image import GUEST_BINARIES, ImageStore, build_key, kernel_package
from ._sdk import libvirt
from ._seccomp import available as seccomp_available

PROBE_SECONDS = 0.8
_KVM_FIX = (
    "for KVM speed, run on a host whose CPU (or hypervisor, for nested guests) gives KVM "
    "VT-x/AMD-V; the check runs again after a reboot, or now with "
    "rm {root}/accel.json"
)
_T = TypeVar("_T")


def _socket(uri: str) -> str | None:
    """The local socket a qemu:// URI talks to, when it is a local one."""
    if uri.startswith("qemu:///system"):
        return "/run/libvirt/libvirt-sock"
    return None


def _within(seconds: float, call: Callable[[], _T]) -> _T:
    """`call()` or TimeoutError: a stuck daemon must not hang the selector."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {seconds} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _connect(uri: str) -> libvirt.virConnect:
    conn = libvirt.open(uri)
    conn.getLibVersion()
    return conn


def probe(uri: str) -> Availability:
    socket = _socket(uri)
    if socket is not None and not os.path.exists(socket):
        return Availability(False, f"libvirtd is not running (no {socket})", FIX)
    try:
        conn = _within(PROBE_SECONDS, lambda: _connect(uri))
    except Exception as exc:
        return Availability(False, f"libvirt at {uri} does not answer: {exc}", FIX)
    try:
        if conn.getType() != "QEMU":
            return Availability(False, f"{uri} is not a QEMU driver", "use a qemu:// URI")
    finally:
        conn.close()
    return Availability(True)


def _kvm_device_check(ok: bool, detail: str, fix: str | None = None) -> Check:
    return Check("permission: /dev/kvm", ok, detail, fix, column=CheckColumn.PERMISSION)


def _guest_image_check(ok: bool, detail: str, fix: str | None = None) -> Check:
    return Check("installed: VM guest image", ok, detail, fix, column=CheckColumn.INSTALLED)


def _kvm_device() -> Check:
    if not os.path.exists("/dev/kvm"):
        return _kvm_device_check(True, "absent: guests run under TCG (slower, still isolated)")
    info = os.stat("/dev/kvm")
    group = grp.getgrgid(info.st_gid).gr_name
    open_to_group = bool(info.st_mode & stat.S_IRGRP and info.st_mode & stat.S_IWGRP)
    ok = group == "kvm" and open_to_group
    return _kvm_device_check(
        ok,
        f"mode {stat.filemode(info.st_mode)}, group {group}"
        + ("" if ok else ": libvirt re-probes QEMU (~40 s) before every domain start"),
        None if ok else "chgrp kvm /dev/kvm && chmod 660 /dev/kvm",
    )


def _image_check(root: Path) -> Check:
    image = ImageStore(root).current()
    if image is not None:
        return _guest_image_check(True, f"built ({build_key()}, kernel {image.release})")
    missing = [path for path in GUEST_BINARIES if not os.access(path, os.X_OK)]
    tools = [tool for tool in ("apt-get", "apt-cache", "dpkg-deb", "ldd") if not shutil.which(tool)]
    if missing or tools:
        packages = " ".join(GUEST_BINARIES[path] for path in missing)
        return _guest_image_check(
            False,
            f"not built and cannot be: missing {', '.join(missing + tools)}",
            f"apt-get install {packages}".strip(),
        )
    try:
        package = kernel_package()
    except Exception as exc:
        return _guest_image_check(False, f"not built; no kernel package: {exc}", "apt-get update")
    return _guest_image_check(True, f"not built yet; first launch builds it from {package}")


def _state_dir_check(root: Path) -> Check:
    existing = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    writable = os.access(existing, os.W_OK)
    return Check(
        "permission: state directory",
        writable,
        f"{root}" + ("" if writable else f": {existing} not writable"),
        None if writable else "run as root, or set SANDBOXER_VM_DIR to a directory QEMU can read",
        column=CheckColumn.PERMISSION,
    )


def _accelerator_check(uri: str, root: Path) -> Check:
    """Which accelerator guests get; boots the KVM check guest if it never ran here."""
    conn = libvirt.open(uri)
    try:
        image = ImageStore(root).current()
        if image is None:
            if not kvm_offered(conn):
                tcg = "TCG: libvirt offers no KVM domains"
                return Check("accelerator", True, tcg, _KVM_FIX.format(root=root))
            detail = "decided at the first launch (a KVM guest boots once to check)"
            return Check("accelerator", True, detail)
        accel = AcceleratorChooser(root).choose(conn, image, None, root / "run")
    finally:
        conn.close()
    fix = _KVM_FIX.format(root=root) if accel.domain_type == TCG else None
    return Check("accelerator", True, f"{accel.label}: {accel.reason}", fix)


def diagnose(uri: str, root: Path) -> list[Check]:
    reachable = probe(uri)
    checks = [
        Check(
            f"reachable: libvirtd ({uri})",
            reachable.available,
            reachable.reason,
            reachable.fix,
            column=CheckColumn.REACHABLE,
        )
    ]
    checks.append(_kvm_device())
    if reachable.available:
        checks.append(_accelerator_check(uri, root))
    checks.append(_image_check(root))
    checks.append(_state_dir_check(root))
    checks.append(
        Check(
            "installed: libseccomp",
            seccomp_available(),
            "compiles the profile's seccomp policy for the guest",
            None if seccomp_available() else "apt-get install libseccomp2",
            column=CheckColumn.INSTALLED,
        )
    )
    return checks
