"""The small abstract `Backend` every engine adapter implements, and the data it trades in."""

from __future__ import annotations

import abc
import enum
import io
import posixpath
import tarfile
from collections.abc import Generator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import attrs

from ._errors import EngineError, SandboxFileNotFound
from ._models import PortMapping, SandboxSpec
from ._profiles import Profile


class SandboxState(enum.Enum):
    """One set of states for every engine; each adapter maps its own onto these."""

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    DESTROYED = "destroyed"
    UNKNOWN = "unknown"


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@attrs.frozen
class Capabilities:
    """What a backend can do, declared as class-level data; the selector reads only this."""

    kind: str  # "app" | "system" | "vm"
    isolation: str  # "process" | "user" | "kernel"
    init: bool  # can run a real init as PID 1
    custom_kernel: bool
    nested: bool
    networks: frozenset[str]
    limits: frozenset[str]  # subset of {"cpus", "memory", "pids"}
    mounts: bool
    ports: bool
    start_seconds: float  # typical launch-to-exec-ready cost, for ranking and max_start_seconds
    # Profile control -> how this backend enforces it. A control missing here cannot be enforced.
    controls: Mapping[str, str] = attrs.field(converter=_frozen)
    # Profile control -> why this backend cannot enforce it.
    unenforceable: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)
    # Boots a user's own disk image (an absolute path to a .qcow2, .img or .raw file).
    disk_images: bool = False


@attrs.frozen
class Availability:
    available: bool
    reason: str = ""
    fix: str | None = None


@attrs.frozen
class Check:
    """One line of `sandboxer doctor`: what was checked, whether it passed, how to fix it."""

    name: str
    ok: bool
    detail: str = ""
    fix: str | None = None


@attrs.frozen
class ControlStatus:
    """Whether one profile control is enforced on a sandbox, and by what (or why not)."""

    enforced: bool
    mechanism: str

    def __str__(self) -> str:
        return ("enforced: " if self.enforced else "NOT enforced: ") + self.mechanism


@attrs.frozen
class LaunchPlan:
    """A validated spec with every default resolved: what a backend creates, exactly."""

    spec: SandboxSpec
    name: str
    labels: Mapping[str, str]
    network: str
    ports: tuple[PortMapping, ...]  # host ports all chosen
    user: str | None
    cpus: float | None
    memory: int | None
    pids: int | None

    @property
    def profile(self) -> Profile:
        return self.spec.profile


@attrs.frozen
class Handle:
    """A backend's reference to one live sandbox; `native` is the engine's own object."""

    id: str
    name: str
    native: Any = attrs.field(eq=False, repr=False, default=None)


@attrs.frozen
class ExecRequest:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    workdir: str | None
    user: str | None
    stdin: bytes | None
    timeout: float | None


@attrs.frozen
class ExitStatus:
    exit_code: int
    timed_out: bool = False


@attrs.frozen
class SandboxInfo:
    """One of our sandboxes as found on an engine (for ls and gc)."""

    backend: str
    id: str
    name: str
    state: SandboxState
    labels: Mapping[str, str]


# A backend's exec yields ("stdout" | "stderr", chunk) and returns the exit status.
ExecGenerator = Generator[tuple[str, bytes], None, ExitStatus]


class Backend(abc.ABC):
    """One engine adapter. Instances are long-lived and shared: keep a client, not a sandbox."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> Availability:
        """Can this engine launch now? Fast (well under a second) and never raises."""

    @classmethod
    def diagnose(cls) -> list[Check]:
        """Detailed health checks for `sandboxer doctor`; adapters add their own."""
        state = cls.probe()
        return [Check("engine reachable", state.available, state.reason, state.fix)]

    @abc.abstractmethod
    def create(self, plan: LaunchPlan) -> Handle:
        """Create and start the sandbox; return once it is ready for exec."""

    @abc.abstractmethod
    def exec(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        """Run a command; kill it (and what it started) once request.timeout passes."""

    @abc.abstractmethod
    def stop(self, handle: Handle, timeout: float) -> None:
        """Stop gracefully, forcing it after `timeout` seconds."""

    @abc.abstractmethod
    def remove(self, name: str) -> None:
        """Remove the sandbox called `name` and everything made for it; no error if absent."""

    @abc.abstractmethod
    def state(self, handle: Handle) -> SandboxState: ...

    @abc.abstractmethod
    def logs(self, handle: Handle) -> str:
        """Output of the sandbox's main process or console."""

    @abc.abstractmethod
    def list_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox on this engine that carries our labels, whoever made it."""

    def close(self) -> None:  # noqa: B027 - optional hook; most clients need no closing
        """Release the engine connection."""

    def enforcement(self, plan: LaunchPlan) -> dict[str, ControlStatus]:
        """How each control the plan's profile asks for is enforced here."""
        caps = self.capabilities
        return {
            control: ControlStatus(True, caps.controls[control])
            if control in caps.controls
            else ControlStatus(False, caps.unenforceable.get(control, "not supported"))
            for control in plan.profile.controls()
        }

    # Files move as tar streams through exec by default, so they reach tmpfs and mounts
    # exactly as the sandbox sees them. Adapters with a native file API may override.
    def put_archive(self, handle: Handle, directory: str, data: bytes) -> None:
        status = self._run(handle, ("tar", "-x", "-f", "-", "-C", directory), data)
        if status[0] != 0:
            raise EngineError(f"unpacking into {directory} failed: {status[2].strip()}")

    def get_archive(self, handle: Handle, path: str) -> bytes:
        parent, base = posixpath.split(posixpath.normpath(path))
        code, out, err = self._run(handle, ("tar", "-c", "-f", "-", "-C", parent or "/", base))
        if code != 0:
            raise packing_error(path, err)
        return out

    def _run(
        self, handle: Handle, argv: tuple[str, ...], stdin: bytes | None = None
    ) -> tuple[int, bytes, str]:
        request = ExecRequest(argv, {}, None, None, stdin, timeout=None)
        status, out, err = drain(self.exec(handle, request))
        return status.exit_code, out, err.decode("utf-8", "replace")


def packing_error(path: str, stderr: str) -> EngineError | SandboxFileNotFound:
    """The error for a `tar -c` of `path` inside a sandbox that failed with `stderr`."""
    if "No such file" in stderr or "not found" in stderr.lower():
        return SandboxFileNotFound(f"no such file in the sandbox: {path}")
    return EngineError(f"packing {path} failed: {stderr.strip()}")


def drain(generator: ExecGenerator) -> tuple[ExitStatus, bytes, bytes]:
    """Run an exec generator to its end: (status, stdout, stderr)."""
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    while True:
        try:
            stream, chunk = next(generator)
        except StopIteration as stop:
            return stop.value, b"".join(chunks["stdout"]), b"".join(chunks["stderr"])
        chunks[stream].append(chunk)


def single_file_archive(name: str, data: bytes, mode: int) -> bytes:
    """A tar holding one regular file, for put_archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
