"""The benchmark's work done by hand with the docker SDK, with the hardened profile's options.

Same image, same PID 1 (docker-init + sleep), same security options and limits as a
sandboxer launch with the default (hardened) profile: cap_drop ALL, no-new-privileges,
the same seccomp policy, read-only root with a tmpfs /tmp, uid 1000, pids and memory
limits, no network. Files move through exec (stdin into `cat`), because Docker's archive
API refuses a read-only root.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import docker

from sandboxer._labels import ownership_labels
from sandboxer.images import IMAGE_VERSION

_SECCOMP = Path(__file__).resolve().parent.parent / "profiles" / "seccomp-hardened.json"
_MIB = 1024 * 1024


class RawDriver:
    def __init__(self, image: str = f"sandboxer/minimal:{IMAGE_VERSION}") -> None:
        self.client = docker.from_env(max_pool_size=64)
        self.seccomp = _SECCOMP.read_text()
        self.image = image

    def launch(self) -> Any:
        name = f"sbx-rawbench-{uuid.uuid4().hex[:12]}"
        return self.client.containers.run(
            self.image,
            ["sleep", "2147483647"],
            name=name,
            hostname=name,
            labels=ownership_labels(),  # so `sandboxer gc` finds a leftover
            detach=True,
            init=True,
            user="1000:1000",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true", "seccomp=" + self.seccomp],
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={64 * _MIB},mode=1777"},
            network_mode="none",
            pids_limit=128,
            mem_limit=256 * _MIB,
            memswap_limit=256 * _MIB,
        )

    def exec(self, box: Any, argv: list[str]) -> bytes:
        code, output = box.exec_run(argv)
        if code != 0:
            raise RuntimeError(f"{argv} exited {code}: {output!r}")
        data: bytes = output
        return data

    def write(self, box: Any, path: str, data: bytes) -> None:
        api = self.client.api
        exec_id = api.exec_create(box.id, ["sh", "-c", f"cat > {path}"], stdin=True)["Id"]
        sock: socket.socket = api.exec_start(exec_id, socket=True)._sock
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        finally:
            sock.close()
        if api.exec_inspect(exec_id)["ExitCode"] not in (0, None):
            raise RuntimeError(f"writing {path} failed")

    def read(self, box: Any, path: str) -> bytes:
        return self.exec(box, ["cat", path])

    def destroy(self, box: Any) -> None:
        box.remove(force=True, v=True)

    def version(self) -> str:
        return f"Docker {self.client.version()['Version']}"

    def close(self) -> None:
        self.client.close()
