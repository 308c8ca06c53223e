"""The benchmark's work done by hand with pylxd, with the hardened profile's settings.

The instance config is what backends/incus builds for the hardened profile, written out
here by hand: no profiles inherited, a read-only root disk with a tmpfs /tmp, every
capability dropped (lxc.cap.keep = none), no_new_privs, the same seccomp allowlist as an
LXC policy in `raw.seccomp`, pids and memory limits without swap, an isolated idmap,
no NIC (loopback raised by a start-host hook). Exec goes through the REST exec endpoint
with record-output (one POST, one operation wait, two log fetches): pylxd's `execute()`
polls its websockets with 0.1 s sleeps and breaks when a command ends before they
connect, so it would flatter sandboxer. Files use pylxd's file API.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pylxd

from sandboxer._labels import ownership_labels
from sandboxer.images import IMAGE_VERSION

_SECCOMP = Path(__file__).resolve().parent.parent / "profiles" / "seccomp-hardened.json"
_SOCKET = "/var/lib/incus/unix.socket"
IMAGE = "sandboxer/minimal"
_RAW_LXC = "\n".join(
    [
        "lxc.hook.start-host = /bin/sh -c 'nsenter --net=/proc/$LXC_PID/ns/net ip link set lo up'",
        "lxc.no_new_privs = 1",
        "lxc.cap.keep = none",
        "lxc.mount.entry = tmpfs tmp tmpfs rw,nosuid,nodev,size=67108864,mode=1777,create=dir 0 0",
    ]
)


def _condition(arg: dict[str, Any]) -> str:
    if arg["op"] == "SCMP_CMP_MASKED_EQ":  # LXC: [index, datum, op, mask]
        return f"[{arg['index']},{arg.get('valueTwo', 0)},{arg['op']},{arg['value']}]"
    return f"[{arg['index']},{arg['value']},{arg['op']}]"


def policy_lines(policy: dict[str, Any]) -> Iterator[str]:
    """The policy (allow and errno rules, this host's arch) in LXC's policy format 2."""
    yield from ("2", f"allowlist errno {policy.get('defaultErrnoRet', 1)}", "[all]")
    for entry in policy["syscalls"]:
        if "amd64" not in entry.get("includes", {}).get("arches", ["amd64"]):
            continue
        action = "allow"
        if entry["action"] == "SCMP_ACT_ERRNO":
            action = f"errno {entry.get('errnoRet', 1)}"
        conditions = "".join(_condition(arg) for arg in entry.get("args") or [])
        for name in entry["names"]:
            yield f"{name} {action} {conditions}".rstrip()


class RawDriver:
    """`alias`: the image's alias prefix (the built-in sandboxer imported, by default);
    `init`: PID 1 for an image without an init of its own (raw.lxc lxc.init.cmd)."""

    def __init__(self, alias: str = f"{IMAGE}:{IMAGE_VERSION}", init: str | None = None) -> None:
        self.client = pylxd.Client(endpoint=_SOCKET)
        self.pool = self.client.profiles.get("default").devices["root"]["pool"]
        self.seccomp = "\n".join(policy_lines(json.loads(_SECCOMP.read_text()))) + "\n"
        self.alias = alias
        self.raw_lxc = _RAW_LXC + (f"\nlxc.init.cmd = {init}" if init else "")
        self._image: str | None = None

    def image(self) -> str:
        """The image imported under `alias` (the bench launches through sandboxer first)."""
        if self._image is None:
            ours = [
                image
                for image in self.client.images.all()
                if any(a["name"].startswith(self.alias) for a in image.aliases)
            ]
            if not ours:
                raise RuntimeError(f"no {self.alias}* image on Incus yet")
            self._image = str(max(ours, key=lambda image: image.uploaded_at).fingerprint)
        return self._image

    def launch(self) -> Any:
        labels = {f"user.{k}": v for k, v in ownership_labels().items()}
        return self.client.instances.create(
            {
                "name": f"sbx-rawbench-{uuid.uuid4().hex[:12]}",
                "type": "container",
                "source": {"type": "image", "fingerprint": self.image()},
                "profiles": [],
                "config": {
                    **labels,
                    "limits.processes": "128",
                    "limits.memory": str(256 * 1024 * 1024),
                    "limits.memory.swap": "false",
                    "security.privileged": "false",
                    "security.idmap.isolated": "true",
                    "security.nesting": "false",
                    "raw.seccomp": self.seccomp,
                    "raw.lxc": self.raw_lxc,
                },
                "devices": {
                    "root": {"type": "disk", "path": "/", "pool": self.pool, "readonly": "true"}
                },
                "start": True,
            },
            wait=True,
        )

    def exec(self, box: Any, argv: list[str]) -> bytes:
        api = self.client.api
        body = {
            "command": argv,
            "record-output": True,
            "wait-for-websocket": False,
            "interactive": False,
            "user": 1000,
            "group": 1000,
            "cwd": "/",
        }
        operation = api.instances[box.name].exec.post(json=body).json()["operation"]
        done = api.operations[operation.rsplit("/", 1)[-1]].wait.get().json()["metadata"]
        code, logs = done["metadata"]["return"], done["metadata"]["output"]
        # Both streams, as sandboxer's exec returns both (the logs go with the instance).
        stdout, stderr = (
            api.instances[box.name]
            .logs["exec-output"][logs[fd].rsplit("/", 1)[-1]]
            .get(is_api=False)
            .content
            for fd in ("1", "2")
        )
        if code != 0:
            raise RuntimeError(f"{argv} exited {code}: {stderr!r}")
        data: bytes = stdout
        return data

    def write(self, box: Any, path: str, data: bytes) -> None:
        box.files.put(path, data, mode=0o644, uid=1000, gid=1000)

    def read(self, box: Any, path: str) -> bytes:
        data: bytes = box.files.get(path)
        return data

    def destroy(self, box: Any) -> None:
        box.stop(force=True, wait=True)
        box.delete(wait=True)

    def version(self) -> str:
        return f"Incus {self.client.host_info['environment']['server_version']}"

    def close(self) -> None:
        self.client.api.session.close()
