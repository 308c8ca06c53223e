"""The benchmark's work done by hand with libvirt-python: the same guest, no sandboxer.

A VM sandbox is a kernel, an initramfs holding the guest (its init enforces the hardened
profile: uid 1000, no capabilities, no_new_privs, seccomp, read-only root, cgroup limits)
and qemu-ga. Building that guest is not SDK work, so this driver boots the very files a
sandboxer launch used (captured once, before any timing: the kernel, the initramfs with
the hardened sandbox's config, the command line, KVM or TCG) from a domain XML written
here by hand, waits for the agent, and runs commands through the guest's exec wrapper
with guest-exec and guest-exec-status, files with guest-file-*, as a careful user of
the raw SDK would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

import sandboxer
from sandboxer._labels import ownership_labels

_URI = "qemu:///system"
_ROOT = Path("/var/lib/sandboxer/vm/bench-raw")  # where QEMU may read and write
_NAMESPACE = "https://github.com/sandboxer/sandboxer/libvirt/1"  # so `sandboxer gc` finds leftovers
_WRAPPER = "/sbin/sbx-exec"
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A command much above 160 KiB never gets its reply (see backends/libvirt/_agent.py), so
# data goes in small pieces; replies may be bigger (at most 4 MiB, base64 adds a third).
_WRITE_CHUNK, _READ_CHUNK = 96 * 1024, 1536 * 1024

_XML = """<domain type='{accel}'>
  <name>{name}</name>
  <metadata><sandboxer:sandbox xmlns:sandboxer='{namespace}'>{labels}</sandboxer:sandbox></metadata>
  <memory unit='KiB'>{memory_kib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>{loader}
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


class RawDriver:
    def __init__(self) -> None:
        libvirt.registerErrorHandler(lambda _context, _error: None, None)
        self.conn = libvirt.open(_URI)
        self.dir = _ROOT / str(os.getpid())  # this run's initramfs and console logs
        self.template: dict[str, str] | None = None

    def _capture(self) -> dict[str, str]:
        """The boot files and settings of a sandboxer VM with the default (hardened) spec."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for directory in (_ROOT, self.dir):
            directory.chmod(0o755)
        with sandboxer.launch(image="sandboxer/minimal", backend="libvirt") as sandbox:
            domain = self.conn.lookupByName(sandbox.name)
            root = ET.fromstring(domain.XMLDesc(0))
            initrd = self.dir / "initrd.img"
            shutil.copyfile(str(root.findtext("os/initrd")), initrd)
            initrd.chmod(0o644)
            loader = root.findtext("os/loader")
            return {
                "accel": str(root.get("type")),
                "memory_kib": str(root.findtext("memory")),
                "kernel": str(root.findtext("os/kernel")),
                "initrd": str(initrd),
                "cmdline": str(root.findtext("os/cmdline")),
                "loader": f"\n    <loader readonly='yes' type='rom'>{loader}</loader>"
                if loader
                else "",
            }

    def launch(self) -> Any:
        if self.template is None:
            self.template = self._capture()
        name = f"sbx-rawbench-{uuid.uuid4().hex[:12]}"
        labels = "".join(
            f"<sandboxer:label name='{k}'>{v}</sandboxer:label>"
            for k, v in ownership_labels().items()
        )
        xml = _XML.format(
            name=name,
            namespace=_NAMESPACE,
            labels=labels,
            console=self.dir / f"{name}.log",
            **self.template,
        )
        domain = self.conn.createXML(xml, 0)
        try:
            deadline = time.monotonic() + 180
            while not self._ping(domain):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: the guest agent never answered")
                time.sleep(0.02)
        except BaseException:
            self.destroy(domain)
            raise
        return domain

    @staticmethod
    def _ping(domain: Any) -> bool:
        try:
            libvirt_qemu.qemuAgentCommand(domain, '{"execute":"guest-ping"}', 1, 0)
        except libvirt.libvirtError:
            return False
        return True

    @staticmethod
    def _call(domain: Any, command: str, **arguments: Any) -> Any:
        message = json.dumps({"execute": command, "arguments": arguments})
        return json.loads(libvirt_qemu.qemuAgentCommand(domain, message, 30, 0))["return"]

    def exec(self, box: Any, argv: list[str]) -> bytes:
        # The guest's wrapper puts the command in the sandbox's cgroup, as uid 1000, without
        # capabilities: what every sandboxer exec goes through.
        args = [uuid.uuid4().hex[:12], "", "", "", "", "", "--", *argv]
        pid = self._call(
            box, "guest-exec", path=_WRAPPER, arg=args, env=[_PATH], **{"capture-output": True}
        )["pid"]
        pause = 0.001  # doubling to 20 ms: a quick command is seen at once, a slow one cheaply
        while not (status := self._call(box, "guest-exec-status", pid=pid))["exited"]:
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        if status.get("exitcode") != 0:
            raise RuntimeError(f"{argv} exited {status.get('exitcode')}")
        return base64.b64decode(status.get("out-data", ""))

    def write(self, box: Any, path: str, data: bytes) -> None:
        handle = self._call(box, "guest-file-open", path=path, mode="w")
        try:
            for start in range(0, len(data), _WRITE_CHUNK):
                chunk = base64.b64encode(data[start : start + _WRITE_CHUNK]).decode()
                self._call(box, "guest-file-write", handle=handle, **{"buf-b64": chunk})
        finally:
            self._call(box, "guest-file-close", handle=handle)

    def read(self, box: Any, path: str) -> bytes:
        handle = self._call(box, "guest-file-open", path=path, mode="r")
        parts = []
        try:
            while True:
                reply = self._call(box, "guest-file-read", handle=handle, count=_READ_CHUNK)
                parts.append(base64.b64decode(reply.get("buf-b64", "")))
                if reply.get("eof") or not reply.get("count"):
                    break
        finally:
            self._call(box, "guest-file-close", handle=handle)
        return b"".join(parts)

    def destroy(self, box: Any) -> None:
        name = box.name()
        with contextlib.suppress(libvirt.libvirtError):  # already gone
            box.destroy()
        (self.dir / f"{name}.log").unlink(missing_ok=True)

    def version(self) -> str:
        def dotted(number: int) -> str:
            return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"

        accel = self.template["accel"] if self.template else "?"
        return (
            f"libvirt {dotted(self.conn.getLibVersion())}, QEMU {dotted(self.conn.getVersion())}"
            f" ({'KVM' if accel == 'kvm' else 'TCG'})"
        )

    def close(self) -> None:
        self.conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)
