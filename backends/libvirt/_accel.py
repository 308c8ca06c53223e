"""KVM or TCG: use KVM only where it really runs a guest.

A /dev/kvm that opens is not enough: on some hosts (nested virtualisation without the
CPU features QEMU expects) a KVM guest hangs or dies with "KVM internal error". So the
first launch boots the real guest kernel under KVM with `sandboxer.probe`, which makes
the guest init print a marker and reboot at once. Marker seen: KVM. Anything else
within the deadline: TCG. The verdict is kept on disk per host boot, QEMU version and
guest image, so the check runs once.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import attrs

from sandboxer.backend import LaunchPlan, logger, ownership_labels, timed

from ._domain import Boot, domain_xml
from ._guest_scripts import PROBE_ARGUMENT, PROBE_MARKER
from ._image import GuestImage, build_key
from ._sdk import libvirt

KVM, TCG = "kvm", "qemu"  # libvirt domain types
PROBE_SECONDS = 8.0  # a KVM guest reaches its init in about a second
ENV = "SANDBOXER_LIBVIRT_ACCEL"  # "kvm" or "tcg" forces a choice; unset = detect


@attrs.frozen
class Accelerator:
    domain_type: str
    reason: str

    @property
    def label(self) -> str:
        return "KVM" if self.domain_type == KVM else "TCG (software emulation)"


def kvm_offered(conn: libvirt.virConnect) -> bool:
    """Whether libvirt lists a KVM domain type for x86_64 guests."""
    capabilities = ET.fromstring(conn.getCapabilities())
    return any(
        domain.get("type") == KVM
        for guest in capabilities.iter("guest")
        if any(arch.get("name") == "x86_64" for arch in guest.iter("arch"))
        for domain in guest.iter("domain")
    )


def _cache_key(conn: libvirt.virConnect) -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot_id}/{conn.getLibVersion()}/{conn.getVersion()}/{build_key()}"


class AcceleratorChooser:
    """Picks the domain type once per process, from the on-disk verdict when there is one."""

    def __init__(self, state_dir: Path) -> None:
        self._cache = state_dir / "accel.json"
        self._chosen: Accelerator | None = None

    def cached(self, conn: libvirt.virConnect) -> Accelerator | None:
        try:
            data = json.loads(self._cache.read_text())
        except (OSError, ValueError):
            return None
        if data.get("key") != _cache_key(conn):
            return None
        return Accelerator(data["domain_type"], data["reason"])

    def choose(
        self, conn: libvirt.virConnect, image: GuestImage, loader: str | None, run_dir: Path
    ) -> Accelerator:
        if self._chosen is None:
            self._chosen = self._decide(conn, image, loader, run_dir)
            logger.info("libvirt guests use %s: %s", self._chosen.label, self._chosen.reason)
        return self._chosen

    def _decide(
        self, conn: libvirt.virConnect, image: GuestImage, loader: str | None, run_dir: Path
    ) -> Accelerator:
        forced = os.environ.get(ENV, "").lower()
        if forced in ("kvm", "tcg"):
            return Accelerator(KVM if forced == "kvm" else TCG, f"forced by {ENV}={forced}")
        if not os.path.exists("/dev/kvm"):
            return Accelerator(TCG, "this host has no /dev/kvm")
        if not kvm_offered(conn):
            return Accelerator(TCG, "libvirt offers no KVM domains (is QEMU allowed /dev/kvm?)")
        found = self.cached(conn)
        if found is not None:
            return found
        with timed("kvm probe"):
            works, detail = probe_kvm(conn, image, loader, run_dir)
        verdict = Accelerator(KVM, detail) if works else Accelerator(TCG, detail)
        with contextlib.suppress(OSError):
            self._cache.write_text(
                json.dumps(
                    {
                        "key": _cache_key(conn),
                        "domain_type": verdict.domain_type,
                        "reason": verdict.reason,
                    }
                )
                + "\n"
            )
        return verdict


def probe_kvm(
    conn: libvirt.virConnect, image: GuestImage, loader: str | None, run_dir: Path
) -> tuple[bool, str]:
    """Boot the guest under KVM until its init prints the probe marker."""
    name = f"sbx-kvmprobe-{uuid.uuid4().hex[:8]}"
    console = run_dir / f"{name}.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = LaunchPlan(
        name=name, labels=ownership_labels(), image="sandboxer/minimal", network="none"
    )
    boot = Boot(str(image.kernel), str(image.initrd), loader, (PROBE_ARGUMENT,))
    xml = domain_xml(plan, accel=KVM, console_log=str(console), boot=boot)
    started = time.monotonic()
    try:
        try:
            domain = conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            return False, f"KVM is present but QEMU cannot start a KVM guest ({exc})"
        while time.monotonic() - started < PROBE_SECONDS:
            with contextlib.suppress(OSError):
                if PROBE_MARKER in console.read_text(errors="replace"):
                    return True, f"a KVM guest booted in {time.monotonic() - started:.1f} s"
            try:
                active = domain.isActive()
            except libvirt.libvirtError:
                active = False
            if not active:
                return False, "KVM is present but the probe guest died before its init ran"
            time.sleep(0.1)
        return False, (
            f"KVM is present but a KVM guest made no progress in {PROBE_SECONDS:.0f} s "
            "(e.g. 'KVM internal error' under nested virtualisation)"
        )
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.lookupByName(name).destroy()
        with contextlib.suppress(OSError):
            console.unlink()
