"""An in-memory fake engine: the whole Backend contract without a kernel (unit tests only).

Files live in a dict, mounts are real host directories, commands run through a tiny
interpreter of the busybox commands the contract suite uses, and `httpd` serves files
on the mapped host port so the port contract holds end to end. It enforces nothing.
"""

from __future__ import annotations

import errno
import http.server
import io
import os
import posixpath
import shlex
import shutil
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import ClassVar

import attrs

from .._backend import (
    ArchiveStream,
    Availability,
    Backend,
    Capabilities,
    ExecGenerator,
    ExecRequest,
    ExitStatus,
    Handle,
    LaunchPlan,
    NetworkDriver,
    NetworkInfo,
    ProcessChannel,
    ProcessRequest,
    SandboxInfo,
    SandboxState,
    VolumeDriver,
    VolumeInfo,
    VolumeMount,
)
from .._errors import (
    EngineError,
    ImageNotFound,
    SandboxExists,
    SandboxFileNotFound,
    SandboxNotFound,
)
from .._labels import LAUNCH, is_ours
from .._models import Mount
from .._profiles import CONTROLS
from .._vocabulary import PullPolicy
from ..images import ImageConfig, is_builtin
from ._fake_files import file_call, run_file_call

_USERS = {"root": 0, "sandbox": 1000, "nobody": 65534}


@attrs.define
class _FakeSandbox:
    plan: LaunchPlan
    id: str
    files: dict[str, bytes] = attrs.Factory(dict)
    dirs: set[str] = attrs.Factory(lambda: {"/", "/tmp", "/home/sandbox", "/etc"})
    state: SandboxState = SandboxState.RUNNING
    servers: list[http.server.ThreadingHTTPServer] = attrs.Factory(list)
    calls: list[tuple[str, ...]] = attrs.Factory(list)
    # Each mount's source, held open from create on, as an engine's mount holds it: the
    # path it was given may be gone afterwards (sandboxer pins sources only for create).
    held: dict[str, int] = attrs.Factory(dict)

    def hold_mounts(self, volume_dirs: Mapping[str, str]) -> None:
        for mount in self.plan.mounts:
            self.held[mount.target] = os.open(mount.source, os.O_PATH)
        for volume in self.plan.volumes:
            self.held[volume.target] = os.open(volume_dirs[volume.name], os.O_PATH)

    def release_mounts(self) -> None:
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()

    def host_path(self, path: str) -> tuple[str | None, bool]:
        """(host path, read_only) when `path` lies in a mount, else (None, read_only_root)."""
        mounts: list[Mount | VolumeMount] = [*self.plan.mounts, *self.plan.volumes]
        for mount in mounts:
            if path == mount.target or path.startswith(mount.target + "/"):
                source = f"/proc/self/fd/{self.held[mount.target]}"
                return source + path[len(mount.target) :], mount.read_only
        return None, self.plan.read_only_root and not self.in_tmpfs(path)

    def in_tmpfs(self, path: str) -> bool:
        return any(path.startswith(t.path.rstrip("/") + "/") for t in self.plan.tmpfs)

    def check_tmpfs(self, path: str, data: bytes, uid: int) -> None:
        """As the kernel refuses a write to a tmpfs: EACCES for a user its mode (of a
        root-owned mount) shuts out, ENOSPC past its size."""
        for tmpfs in self.plan.tmpfs:
            prefix = tmpfs.path.rstrip("/") + "/"
            if path.startswith(prefix):
                if uid != 0 and not tmpfs.mode & 0o002:
                    raise PermissionError(errno.EACCES, "Permission denied", path)
                held = sum(len(d) for p, d in self.files.items() if p.startswith(prefix))
                if held - len(self.files.get(path, b"")) + len(data) > tmpfs.size:
                    raise OSError(errno.ENOSPC, "No space left on device", path)

    def read(self, path: str) -> bytes:
        host, _ = self.host_path(path)
        if host is not None:
            with open(host, "rb") as f:
                return f.read()
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def write(self, path: str, data: bytes, uid: int = 0) -> None:
        host, read_only = self.host_path(path)
        if read_only:
            raise PermissionError(f"read-only file system: {path}")
        if host is not None:
            with open(host, "wb") as f:
                f.write(data)
            return
        if posixpath.dirname(path) not in self.dirs:
            raise FileNotFoundError(posixpath.dirname(path))
        self.check_tmpfs(path, data, uid)
        self.files[path] = data

    def mkdir(self, path: str) -> None:
        host, read_only = self.host_path(path)
        if read_only:
            raise PermissionError(f"read-only file system: {path}")
        if host is not None:
            os.makedirs(host, exist_ok=True)
            return
        while path not in self.dirs:
            self.dirs.add(path)
            path = posixpath.dirname(path)


def _uid(user: str | None) -> int:
    name = (user or "0").split(":")[0]
    return int(name) if name.isdigit() else _USERS.get(name, 0)


def chunked(data: bytes, size: int = 64 * 1024) -> ArchiveStream:
    """`data` in pieces, as an engine's stream would bring it."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


class FakeBackend(Backend):
    """Register with `sandboxer.register_backend("fake", FakeBackend)`."""

    name: ClassVar[str] = "fake"
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="app",
        isolation="process",
        init=False,
        custom_kernel=False,
        nested=False,
        networks=frozenset({"none", "isolated", "bridge"}),
        limits=frozenset({"cpu_limit", "memory_limit", "pids_limit"}),
        mounts=True,
        ports=True,
        start_seconds=0.0,
        controls={control: "recorded only (in-memory fake)" for control in CONTROLS},
    )
    # The "engine": shared by every instance, like a daemon would be.
    sandboxes: ClassVar[dict[str, _FakeSandbox]] = {}
    # Volume name -> (labels, the host directory holding its files).
    volume_store: ClassVar[dict[str, tuple[Mapping[str, str], str]]] = {}
    network_store: ClassVar[dict[str, NetworkInfo]] = {}
    available: ClassVar[bool] = True

    @classmethod
    def probe(cls) -> Availability:
        return Availability(cls.available, "" if cls.available else "fake engine switched off")

    def _get(self, name: str) -> _FakeSandbox:
        try:
            return self.sandboxes[name]
        except KeyError:
            raise SandboxNotFound(name) from None

    def image_config(self, image: str, pull: PullPolicy) -> ImageConfig:
        if not is_builtin(image):
            raise ImageNotFound(f"no image {image!r} in the fake engine")
        return ImageConfig()

    def create(self, plan: LaunchPlan) -> Handle:
        self.image_config(plan.image, plan.pull)
        if plan.name in self.sandboxes:
            raise SandboxExists(plan.name)
        sandbox = _FakeSandbox(plan=plan, id=uuid.uuid4().hex)
        sandbox.dirs.update(tmpfs.path for tmpfs in plan.tmpfs)
        if plan.command:  # not run: its command line stands for its output in the logs
            sandbox.calls.append(plan.command)
        sandbox.hold_mounts({name: path for name, (_, path) in self.volume_store.items()})
        self.sandboxes[plan.name] = sandbox
        return Handle(sandbox.id, plan.name, sandbox)

    def exec(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        sandbox = self._get(handle.name)
        if sandbox.state is not SandboxState.RUNNING:
            raise SandboxNotFound(f"{handle.name} is not running")
        sandbox.calls.append(request.argv)
        argv = request.argv
        found = file_call(argv)
        if found is not None:  # listdir, stat, remove, mkdir
            return (yield from run_file_call(sandbox, request, *found))
        if argv[0] in ("sh", "/bin/sh") and len(argv) >= 3 and argv[1] == "-c":
            commands = [shlex.split(part) for part in argv[2].split(";") if part.strip()]
        else:
            commands = [list(argv)]
        code = 0
        for words in commands:
            out, err, code, timed_out = _Shell(sandbox, request).run(words)
            if out:
                yield "stdout", out
            if err:
                yield "stderr", err
            if timed_out:
                return ExitStatus(-1, timed_out=True)
            if words[0] == "exit":
                break
        return ExitStatus(code)

    def start_process(self, handle: Handle, request: ProcessRequest) -> ProcessChannel:
        from ._fake_process import FakeProcess  # it builds on this module's shell

        sandbox = self._get(handle.name)
        if sandbox.state is not SandboxState.RUNNING:
            raise SandboxNotFound(f"{handle.name} is not running")
        sandbox.calls.append(request.exec.argv)
        return FakeProcess(sandbox, request)

    def put_archive(self, handle: Handle, directory: str, data: bytes, timeout: float) -> None:
        sandbox = self._get(handle.name)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                path = posixpath.normpath(posixpath.join(directory, member.name))
                try:
                    if member.isdir():
                        sandbox.mkdir(path)
                    elif member.isfile():
                        stream = tar.extractfile(member)
                        sandbox.write(path, stream.read() if stream else b"")
                except OSError as exc:  # as a real engine's tar -x fails
                    raise EngineError(f"unpacking into {directory} failed: {exc}") from exc

    def get_archive(self, handle: Handle, path: str, timeout: float, limit: int) -> ArchiveStream:
        sandbox = self._get(handle.name)
        buffer = io.BytesIO()
        base = posixpath.basename(path)
        entries = [(p, sandbox.files[p]) for p in sorted(sandbox.files) if p.startswith(path + "/")]
        dirs = sorted(d for d in sandbox.dirs if d == path or d.startswith(path + "/"))
        if not entries and not dirs:
            try:
                entries = [(path, sandbox.read(path))]
            except FileNotFoundError:
                raise SandboxFileNotFound(f"no such file in the sandbox: {path}") from None
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for directory in dirs:
                info = tarfile.TarInfo(base + directory[len(path) :])
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            for file_path, content in entries:
                info = tarfile.TarInfo(base + file_path[len(path) :])
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        yield from chunked(buffer.getvalue())

    def stop(self, handle: Handle, timeout: float) -> None:
        sandbox = self._get(handle.name)
        sandbox.state = SandboxState.STOPPED
        # As on an engine: its processes end and its tmpfs paths lose what they held.
        for server in sandbox.servers:
            server.shutdown()
            server.server_close()
        sandbox.servers.clear()
        for path in list(sandbox.files):
            if sandbox.in_tmpfs(path):
                del sandbox.files[path]

    def start(self, handle: Handle) -> Handle:
        self._get(handle.name).state = SandboxState.RUNNING
        return handle

    def remove(self, name: str, launch: str) -> None:
        sandbox = self.sandboxes.get(name)
        if sandbox is not None and sandbox.plan.labels.get(LAUNCH) == launch:
            del self.sandboxes[name]
            sandbox.release_mounts()
            for server in sandbox.servers:
                server.shutdown()
                server.server_close()

    def state(self, handle: Handle) -> SandboxState:
        sandbox = self.sandboxes.get(handle.name)
        return sandbox.state if sandbox else SandboxState.DESTROYED

    def logs(self, handle: Handle) -> str:
        return "\n".join(" ".join(call) for call in self._get(handle.name).calls)

    def list_sandboxes(self) -> list[SandboxInfo]:
        return [
            SandboxInfo(self.name, s.id, name, s.state, s.plan.labels)
            for name, s in self.sandboxes.items()
        ]

    def volumes(self) -> VolumeDriver:
        return _FakeVolumes(self.name, self.volume_store)

    def networks(self) -> NetworkDriver:
        return _FakeNetworks(self.name, self.network_store)


@attrs.frozen
class _FakeVolumes(VolumeDriver):
    backend: str
    store: dict[str, tuple[Mapping[str, str], str]]

    def create(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        if name in self.store:
            raise SandboxExists(f"volume {name}")
        self.store[name] = (dict(labels), tempfile.mkdtemp(prefix="sandboxer-fake-volume-"))
        return VolumeInfo(self.backend, name, labels)

    def inspect(self, name: str) -> VolumeInfo | None:
        found = self.store.get(name)
        return VolumeInfo(self.backend, name, found[0]) if found else None

    def list(self) -> list[VolumeInfo]:
        return [VolumeInfo(self.backend, name, labels) for name, (labels, _) in self.store.items()]

    def remove(self, name: str) -> None:
        found = self.store.get(name)
        if found is not None and is_ours(found[0]):
            del self.store[name]
            shutil.rmtree(found[1])


@attrs.frozen
class _FakeNetworks(NetworkDriver):
    """Bookkeeping only: the fake runs nothing, so nothing travels on its networks."""

    backend: str
    store: dict[str, NetworkInfo]

    def create(
        self, name: str, *, internal: bool, subnet: str, labels: Mapping[str, str]
    ) -> NetworkInfo:
        if name in self.store:
            raise SandboxExists(f"network {name}")
        self.store[name] = NetworkInfo(self.backend, name, internal, subnet, dict(labels))
        return self.store[name]

    def inspect(self, name: str) -> NetworkInfo | None:
        return self.store.get(name)

    def list(self) -> list[NetworkInfo]:
        return list(self.store.values())

    def remove(self, name: str) -> None:
        found = self.store.get(name)
        if found is not None and is_ours(found.labels):
            del self.store[name]


class _Shell:
    """Runs one simple command of the contract's busybox vocabulary."""

    def __init__(self, sandbox: _FakeSandbox, request: ExecRequest) -> None:
        self.sandbox = sandbox
        self.request = request

    def run(self, words: list[str]) -> tuple[bytes, bytes, int, bool]:
        """(stdout, stderr, exit code, timed out) of one command with its redirections."""
        to_stderr = ">&2" in words
        words = [w for w in words if w != ">&2"]
        target = None
        if ">" in words:
            index = words.index(">")
            words, target = words[:index], words[index + 1]
        handler: Callable[[list[str]], tuple[bytes, int]] | None = getattr(
            self, "cmd_" + words[0].replace("-", "_"), None
        )
        if handler is None:
            return b"", f"sh: {words[0]}: not found\n".encode(), 127, False
        timeout = self.request.timeout
        if words[0] == "sleep" and timeout is not None and float(words[1]) > timeout:
            return b"", b"", -1, True
        try:
            out, code = handler(words[1:])
            if target is not None:
                self.sandbox.write(target, out, _uid(self.request.user))
                out = b""
        except (OSError, ValueError) as exc:
            return b"", f"{words[0]}: {exc}\n".encode(), 1, False
        return (b"", out, code, False) if to_stderr else (out, b"", code, False)

    def cmd_exit(self, args: list[str]) -> tuple[bytes, int]:
        return b"", int(args[0]) if args else 0

    def cmd_true(self, args: list[str]) -> tuple[bytes, int]:
        return b"", 0

    def cmd_echo(self, args: list[str]) -> tuple[bytes, int]:
        return (" ".join(args) + "\n").encode(), 0

    def cmd_cat(self, args: list[str]) -> tuple[bytes, int]:
        if not args:
            return self.request.stdin or b"", 0
        return b"".join(self.sandbox.read(self._path(a)) for a in args), 0

    def cmd_env(self, args: list[str]) -> tuple[bytes, int]:
        return "".join(f"{k}={v}\n" for k, v in self.request.env.items()).encode(), 0

    def cmd_pwd(self, args: list[str]) -> tuple[bytes, int]:
        return ((self.request.workdir or "/") + "\n").encode(), 0

    def cmd_id(self, args: list[str]) -> tuple[bytes, int]:
        return f"{_uid(self.request.user)}\n".encode(), 0

    def cmd_sleep(self, args: list[str]) -> tuple[bytes, int]:
        return b"", 0

    def cmd_wc(self, args: list[str]) -> tuple[bytes, int]:
        return f"{len(self.sandbox.read(self._path(args[-1])))} {args[-1]}\n".encode(), 0

    def cmd_dd(self, args: list[str]) -> tuple[bytes, int]:
        """`dd if=/dev/zero of=PATH bs=N count=N`: zeros, as far as they fit."""
        options = dict(a.split("=", 1) for a in args)
        data = bytes(int(options["bs"]) * int(options["count"]))
        self.sandbox.write(self._path(options["of"]), data, _uid(self.request.user))
        return b"", 0

    def cmd_mkdir(self, args: list[str]) -> tuple[bytes, int]:
        for path in (a for a in args if not a.startswith("-")):
            self.sandbox.mkdir(self._path(path))
        return b"", 0

    def cmd_httpd(self, args: list[str]) -> tuple[bytes, int]:
        port, root = int(args[args.index("-p") + 1]), args[args.index("-h") + 1]
        mapping = next(p for p in self.sandbox.plan.ports if p.guest_port == port)
        sandbox = self.sandbox

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    body = sandbox.read(posixpath.join(root, self.path.lstrip("/")))
                except OSError:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer((mapping.host_ip, mapping.host_port or 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        sandbox.servers.append(server)
        return b"", 0

    def _path(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.request.workdir or "/", path))
