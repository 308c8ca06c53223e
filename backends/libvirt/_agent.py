"""The QEMU guest agent, spoken through libvirt: JSON commands over the virtio channel.

libvirt carries each command and reply as one RPC string of at most 4 MiB (base64 adds
a third), and a command much above 160 KiB never gets its reply here (the agent stops
answering until libvirt resynchronises), so data goes in small pieces and comes back in
bigger ones.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sandboxer.backend import EngineError, SandboxError

from ._errors import libvirt_errors
from ._sdk import libvirt, libvirt_qemu

WRITE_CHUNK = 96 * 1024
READ_CHUNK = 1536 * 1024
DEFAULT_TIMEOUT = 30  # seconds libvirt waits for one reply


class Agent:
    """qemu-ga of one domain."""

    def __init__(self, domain: libvirt.virDomain) -> None:
        self.domain = domain

    def call(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        timeout: int = DEFAULT_TIMEOUT,
    ) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = dict(arguments)
        with libvirt_errors():
            reply = libvirt_qemu.qemuAgentCommand(self.domain, json.dumps(message), timeout, 0)
        return json.loads(reply).get("return")

    def ping(self, timeout: int = 1) -> bool:
        """True once the agent answers (False while it is not connected yet)."""
        try:
            libvirt_qemu.qemuAgentCommand(self.domain, '{"execute":"guest-ping"}', timeout, 0)
        except libvirt.libvirtError:
            return False
        return True

    def spawn(
        self,
        path: str,
        args: Sequence[str],
        env: Sequence[str] = (),
        stdin: bytes | None = None,
        capture: bool = True,
    ) -> int:
        arguments: dict[str, Any] = {
            "path": path,
            "arg": list(args),
            "env": list(env),
            "capture-output": capture,
        }
        if stdin:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        return int(self.call("guest-exec", arguments)["pid"])

    def status(self, pid: int) -> dict[str, Any]:
        result: dict[str, Any] = self.call("guest-exec-status", {"pid": pid})
        return result

    def write_file(self, path: str, data: bytes) -> None:
        handle = self.call("guest-file-open", {"path": path, "mode": "w"})
        try:
            view, start = memoryview(data), 0
            while start < len(data):
                chunk = base64.b64encode(view[start : start + WRITE_CHUNK]).decode()
                written = self.call("guest-file-write", {"handle": handle, "buf-b64": chunk})
                if not written.get("count"):
                    raise EngineError(f"the guest agent wrote nothing to {path}")
                start += int(written["count"])
        finally:
            self.call("guest-file-close", {"handle": handle})

    def exists(self, path: str) -> bool:
        """Whether the agent can open `path` for reading (False while it is unreachable)."""
        try:
            handle = self.call("guest-file-open", {"path": path, "mode": "r"}, timeout=5)
        except SandboxError:  # missing, or the agent is away (the caller sees a dead VM)
            return False
        self.call("guest-file-close", {"handle": handle}, timeout=5)
        return True

    def read_file(self, path: str) -> bytes:
        return b"".join(self.read_chunks(path))

    def read_chunks(self, path: str) -> Iterator[bytes]:
        """A guest file, READ_CHUNK bytes per reply, for a reader that may stop early."""
        handle = self.call("guest-file-open", {"path": path, "mode": "r"})
        try:
            while True:
                reply = self.call("guest-file-read", {"handle": handle, "count": READ_CHUNK})
                yield base64.b64decode(reply.get("buf-b64", ""))
                if reply.get("eof") or not reply.get("count"):
                    break
        finally:
            self.call("guest-file-close", {"handle": handle})
