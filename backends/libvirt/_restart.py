"""What a stopped VM sandbox needs to boot again, kept in its run directory.

The domains are transient: once the guest shuts down libvirt forgets them, and the guest's
root (a tmpfs copy of the image) is gone. What stays on the host is the sandbox's run
directory: its initramfs with the guest config (profile, user, limits, seccomp), the OCI
image's disk, the bind mounts QEMU shares, and this record: the domain XML it was created
with (same UUID, ports, shares) and its main process. Booting that again is a fresh boot
of the same sandbox: the guest's writable state is lost, the mounts' data is kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import attrs

from sandboxer.backend import ExecRequest

BOOT_FILE = "boot.json"


@attrs.frozen
class BootRecord:
    xml: str  # the domain XML, with the UUID the sandbox is known by
    main: ExecRequest | None  # the main process started after each boot; None: idle

    @property
    def uuid(self) -> str:
        return ElementTree.fromstring(self.xml).findtext("uuid") or ""


def save_boot(run: Path, xml: str, uuid: str, main: ExecRequest | None) -> None:
    """Record the domain `uuid` was created from `xml`, and its main process, in `run`."""
    root = ElementTree.fromstring(xml)
    for old in root.findall("uuid"):
        root.remove(old)
    element = ElementTree.Element("uuid")
    element.text = uuid
    root.insert(1, element)  # after <name>, where libvirt puts it
    document = {
        "xml": ElementTree.tostring(root, encoding="unicode"),
        "main": None if main is None else _request_json(main),
    }
    path = run / BOOT_FILE
    path.write_text(json.dumps(document) + "\n")
    path.chmod(0o600)


def load_boot(run: Path) -> BootRecord | None:
    """The record `save_boot` left in `run`; None when there is none (a disk image's
    sandbox, whose cloud-init set-up runs once, or one made before records existed)."""
    try:
        document = json.loads((run / BOOT_FILE).read_text())
    except FileNotFoundError:
        return None
    main = document["main"]
    return BootRecord(document["xml"], None if main is None else _request(main))


def _request_json(request: ExecRequest) -> dict[str, object]:
    return {
        "argv": list(request.argv),
        "env": dict(request.env),
        "workdir": request.workdir,
        "user": request.user,
    }


def _request(document: Any) -> ExecRequest:
    # Written by _request_json into a directory only root can write.
    return ExecRequest(
        argv=tuple(document["argv"]),
        env=dict(document["env"]),
        workdir=document["workdir"],
        user=document["user"],
        stdin=None,
        timeout=None,
    )
