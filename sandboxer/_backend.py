"""The small abstract `Backend` every engine adapter implements, and the data it trades in."""

from __future__ import annotations

import abc
import builtins
import enum
import functools
import io
import posixpath
import tarfile
from collections.abc import Generator, Iterable, Mapping
from typing import Any, ClassVar

import attrs

from ._decide import Capabilities as Capabilities  # adapters import these from here
from ._decide import ControlStatus as ControlStatus
from ._decide import Verdict as Verdict
from ._decide import decide, static_enforcement
from ._errors import (
    EngineError,
    ExecTimeout,
    OutputTooLarge,
    SandboxFileNotFound,
    UnsupportedFeature,
)
from ._output import DEFAULT_MAX_OUTPUT, Collector
from ._plan import LaunchPlan as LaunchPlan  # adapters import it from here
from ._plan import Tmpfs as Tmpfs
from ._plan import VolumeMount as VolumeMount
from ._vocabulary import PullPolicy
from .images import ImageConfig, is_builtin, is_disk_image
from .images.store import default_store


class SandboxState(enum.Enum):
    """One set of states for every engine; each adapter maps its own onto these."""

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    DESTROYED = "destroyed"
    UNKNOWN = "unknown"


@attrs.frozen
class Availability:
    available: bool
    reason: str = ""
    fix: str | None = None


class CheckColumn(enum.StrEnum):
    """The column of `sandboxer doctor`'s table a check answers."""

    INSTALLED = "installed"
    REACHABLE = "reachable"
    PERMISSION = "permission"


@attrs.frozen
class Check:
    """One line of `sandboxer doctor`: what was checked, whether it passed, how to fix it.

    Every check counts for "can run now"; one with a `column` also decides that column.
    """

    name: str
    ok: bool
    detail: str = ""
    fix: str | None = None
    column: CheckColumn | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class Handle:
    """A backend's reference to one live sandbox; `native` is the engine's own object."""

    id: str
    name: str
    native: Any = attrs.field(eq=False, repr=False, default=None)


@attrs.frozen(kw_only=True)
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


@attrs.frozen
class VolumeInfo:
    """A named volume as found on an engine; its labels tell ours (`is_ours`) from others'."""

    backend: str
    name: str
    labels: Mapping[str, str]


class VolumeDriver(abc.ABC):
    """One engine's named volumes: what `Backend.volumes()` hands the core."""

    @abc.abstractmethod
    def create(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        """Create the volume `name` carrying `labels`; SandboxExists if the name is taken."""

    @abc.abstractmethod
    def inspect(self, name: str) -> VolumeInfo | None:
        """The volume called `name`, ours or not; None if there is none."""

    @abc.abstractmethod
    def list(self) -> builtins.list[VolumeInfo]:
        """Every volume on this engine, ours or not."""

    @abc.abstractmethod
    def remove(self, name: str) -> None:
        """Remove the volume `name` if it carries our MANAGED label (never anyone
        else's); no error if absent."""


@attrs.frozen
class NetworkInfo:
    """A named network as found on an engine; its labels tell ours from others'."""

    backend: str
    name: str  # the name sandboxer knows it by (the engine's own object may differ)
    internal: bool  # no route out: members reach each other only
    subnet: str  # "10.140.7.0/24"
    labels: Mapping[str, str]


class NetworkDriver(abc.ABC):
    """One engine's named networks: what `Backend.networks()` hands the core.

    Members of one network reach each other by sandbox name (the engine's DNS, or
    /etc/hosts entries the adapter writes); members of different networks never do."""

    @abc.abstractmethod
    def create(
        self, name: str, *, internal: bool, subnet: str, labels: Mapping[str, str]
    ) -> NetworkInfo:
        """Create the network `name` on the IPv4 `subnet` ("10.140.7.0/24", its first
        host address the gateway), carrying `labels`; without a route out when
        `internal`. SandboxExists if the name is taken, ours or not."""

    @abc.abstractmethod
    def inspect(self, name: str) -> NetworkInfo | None:
        """The network called `name`, ours or not; None if there is none."""

    @abc.abstractmethod
    def list(self) -> builtins.list[NetworkInfo]:
        """Every named network on this engine, ours or not (the engine's built-in
        ones may be left out)."""

    @abc.abstractmethod
    def remove(self, name: str) -> None:
        """Remove the network `name` if it carries our MANAGED label (never anyone
        else's); no error if absent."""


# A backend's exec yields ("stdout" | "stderr", chunk) and returns the exit status.
ExecGenerator = Generator[tuple[str, bytes], None, ExitStatus]


@attrs.frozen
class TerminalSize:
    rows: int
    cols: int


@attrs.frozen(kw_only=True)
class ProcessRequest:
    """A command whose stdin stays open (`ExecRequest.stdin` is unused: bytes go through
    `ProcessChannel.write`); with `terminal` it runs on a pseudo-terminal of that size,
    its stdout and stderr both arriving as "stdout"."""

    exec: ExecRequest
    terminal: TerminalSize | None = None


class ProcessChannel(abc.ABC):
    """One running command with its streams open, as an adapter hands it to the core.

    `output` yields ("stdout" | "stderr", chunk) as it arrives and returns the
    `ExitStatus`; the core reads it from one thread while other threads call the methods
    below. Closing `output` before it ends kills the command and what it started, as for
    `exec`. Every method may be called after the command ended and then does nothing.
    """

    output: ExecGenerator
    # The command's pid as the sandbox sees it (its own PID namespace), if the engine tells.
    pid: int | None = None

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin (the terminal's input with a terminal)."""

    @abc.abstractmethod
    def close_stdin(self) -> None:
        """End of input: the command reads EOF (with a terminal: no effect)."""

    @abc.abstractmethod
    def signal(self, signum: int) -> None:
        """Deliver `signum` to the command; SIGKILL kills it and everything it started."""

    def resize(self, size: TerminalSize) -> None:  # noqa: B027 - no terminal, nothing to do
        """Set the terminal's size (the command gets SIGWINCH); no-op without a terminal."""


class Backend(abc.ABC):
    """One engine adapter. Instances are long-lived and shared: keep a client, not a sandbox."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    # Whether a profile's extras for this engine (`Profile.extras[name]`) apply here.
    takes_extras: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> Availability:
        """Can this engine launch now? Fast (well under a second) and never raises."""

    @classmethod
    def diagnose(cls) -> list[Check]:
        """Detailed health checks for `sandboxer doctor`; adapters add their own."""
        state = cls.probe()
        reachable = CheckColumn.REACHABLE
        return [
            Check("engine reachable", state.available, state.reason, state.fix, column=reachable)
        ]

    @abc.abstractmethod
    def create(self, plan: LaunchPlan) -> Handle:
        """Create and start the sandbox; return once it is ready for exec.

        `plan` is one `check` accepted: translators rely on its refusals (no path a
        shell line or a guest file could not hold), so only engine state and host facts
        that changed since can still fail here."""

    @abc.abstractmethod
    def exec(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        """Run a command; kill it (and what it started) once request.timeout passes.

        Closing the generator before it ends kills the command too: that is how a caller
        that stops reading (or passes a cap) stops it.
        """

    def start_process(self, handle: Handle, request: ProcessRequest) -> ProcessChannel:
        """Start a command whose stdin stays open, on a terminal if the request has one,
        under the same user, limits and profile as `exec`; return once it started."""
        raise UnsupportedFeature(f"{self.name} cannot run background or terminal processes")

    def busybox(self, handle: Handle) -> str | None:
        """The busybox inside the sandbox whose applets the file calls (listdir, stat,
        remove, mkdir) run as the sandbox's user: sandboxer's static helper where the
        adapter mounts it, a built-in image's own. None: the sandbox's own tools, found
        through its PATH (busybox or GNU ones both do)."""
        return None

    @abc.abstractmethod
    def stop(self, handle: Handle, timeout: float) -> None:
        """Stop gracefully, forcing it after `timeout` seconds."""

    def start(self, handle: Handle) -> Handle:
        """Start a stopped sandbox again, its profile, limits, mounts and ports as at
        create; return once it is ready for exec, with the handle to use from now on.
        What its file system keeps is the engine's (docs/backends.md); a running one
        is left as it is."""
        raise UnsupportedFeature(f"{self.name} cannot start a stopped sandbox again")

    @abc.abstractmethod
    def remove(self, name: str, launch: str) -> None:
        """Remove the sandbox called `name` and everything made for it, only where it
        carries the launch id `launch` (its `sandboxer.launch` label): whatever else holds
        that name is not ours and stays. No error if absent."""

    @abc.abstractmethod
    def state(self, handle: Handle) -> SandboxState: ...

    @abc.abstractmethod
    def logs(self, handle: Handle) -> str:
        """Output of the sandbox's main process or console: at most its last LOGS_MAX bytes."""

    @abc.abstractmethod
    def list_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox on this engine that carries our labels, whoever made it."""

    def leftovers(self) -> list[SandboxInfo]:
        """What this engine still holds for sandboxes of ours that are gone (per-sandbox
        networks), each as the gone sandbox with the labels it was made with, so that
        `remove(name, launch)` takes it. Engines that make nothing beside a sandbox have
        none."""
        return []

    def volumes(self) -> VolumeDriver:
        """Named volumes (`Mount(volume=...)`, plan.volumes): the core checks names,
        labels and use before calling the driver; engines without volumes refuse them."""
        raise UnsupportedFeature(f"{self.name} has no named volumes")

    def networks(self) -> NetworkDriver:
        """Named networks (`SandboxSpec(networks=...)`, plan.networks): the core checks
        names, labels and use before calling the driver; engines without them refuse."""
        raise UnsupportedFeature(f"{self.name} has no named networks")

    def image_config(self, image: str, pull: PullPolicy) -> ImageConfig:
        """The config of the OCI image `image` as a launch would find it, fetched by
        `pull` (publish_all reads its exposed ports). This default asks sandboxer's image
        store; built-in images and disk images have nothing of their own."""
        if is_builtin(image) or is_disk_image(image):
            return ImageConfig()
        return default_store().resolve(image, pull).config

    def close(self) -> None:  # noqa: B027 - optional hook; most clients need no closing
        """Release the engine connection."""

    def check(self, plan: LaunchPlan) -> Verdict:
        """The one decider: whether this backend can run `plan`, and how it enforces each
        control. `select` and `launch` both ask it; `create` refuses nothing it could
        have refused here (only engine state and host facts that may change remain)."""
        caps = self.host_capabilities
        return decide(plan, caps, self.enforcement(plan), self.refusals(plan))

    @functools.cached_property
    def host_capabilities(self) -> Capabilities:
        """What this engine on this host can do: probed once per instance, then cached."""
        return self.probe_capabilities()

    def probe_capabilities(self) -> Capabilities:
        """The declared `capabilities`, narrowed by what this engine reports (rootless or
        not, cgroup version, endpoint); adapters whose engines differ so override it."""
        return self.capabilities

    @classmethod
    def refusals(cls, plan: LaunchPlan) -> list[str]:
        """What in `plan` this adapter cannot honour beyond its `capabilities`; adapters
        add their own to these. A pure function of the plan: the selector asks it too."""
        extras = plan.extras.get(cls.name, {})
        if extras and not cls.takes_extras:
            return [f"{cls.name} takes no profile extras, got {', '.join(extras)}"]
        return []

    def enforcement(self, plan: LaunchPlan) -> dict[str, ControlStatus]:
        """How each control the plan's profile asks for is enforced here."""
        return static_enforcement(plan, self.capabilities)

    # Files move as tar streams through exec by default, so they reach tmpfs and mounts
    # exactly as the sandbox sees them. Adapters with a native file API may override.
    def put_archive(self, handle: Handle, directory: str, data: bytes, timeout: float) -> None:
        """Unpack `data` into `directory`; ExecTimeout once `timeout` passes."""
        argv = ("tar", "-x", "-f", "-", "-C", directory)
        request = ExecRequest(
            argv=argv, env={}, workdir=None, user=None, stdin=data, timeout=timeout
        )
        status, _, err = drain(self.exec(handle, request))
        if status.timed_out:
            raise ExecTimeout(argv, timeout, b"", err)
        if status.exit_code != 0:
            raise EngineError(f"unpacking into {directory} failed: {_text(err)}")

    def get_archive(self, handle: Handle, path: str, timeout: float, limit: int) -> ArchiveStream:
        """A tar stream of `path`, chunk by chunk; ExecTimeout once `timeout` passes.

        The reader stops reading past `limit` bytes (closing the stream kills the packing);
        an adapter that stages the archive can use `limit` to bound the staging.
        """
        status, err = yield from archive_chunks(self.exec(handle, tar_request(path, timeout)))
        check_packing(path, status, timeout, err)


ArchiveStream = Generator[bytes, None, None]
# What logs() returns at most: the tail of what the sandbox printed.
LOGS_MAX = 1024 * 1024
# The first bytes of a packing command's stderr, for its error message.
_STDERR_KEPT = 64 * 1024


def tar_request(path: str, timeout: float | None) -> ExecRequest:
    """`tar -c` of one sandbox path to stdout; `--` so a name starting with '-' is a name."""
    parent, base = posixpath.split(posixpath.normpath(path))
    argv = ("tar", "-c", "-f", "-", "-C", parent or "/", "--", base)
    return ExecRequest(argv=argv, env={}, workdir=None, user=None, stdin=None, timeout=timeout)


def archive_chunks(generator: ExecGenerator) -> Generator[bytes, None, tuple[ExitStatus, bytes]]:
    """Yield a packing command's stdout; return its status and the start of its stderr."""
    errors = Collector(_STDERR_KEPT)
    try:
        while True:
            try:
                stream, chunk = next(generator)
            except StopIteration as stop:
                return stop.value, errors.output("stderr")
            if stream == "stdout":
                yield chunk
            else:
                errors.add("stderr", chunk)
    finally:
        generator.close()  # a reader that stopped early: the command is killed


def check_packing(path: str, status: ExitStatus, timeout: float, stderr: bytes) -> None:
    """Raise what a finished `tar -c` of `path` inside a sandbox failed with, if it did."""
    if status.timed_out:
        raise ExecTimeout(("tar",), timeout, b"", stderr)
    if status.exit_code == 0:
        return
    text = _text(stderr)
    if "No such file" in text or "not found" in text.lower():
        raise SandboxFileNotFound(f"no such file in the sandbox: {path}")
    raise EngineError(f"packing {path} failed: {text}")


def log_tail(chunks: Iterable[bytes], limit: int = LOGS_MAX) -> str:
    """The last `limit` bytes of a log read chunk by chunk, as text."""
    kept = bytearray()
    for chunk in chunks:
        kept += chunk
        if len(kept) > 2 * limit:  # trim now and then, not on every chunk
            del kept[:-limit]
    return bytes(kept[-limit:]).decode("utf-8", "replace")


def _text(stderr: bytes) -> str:
    return stderr.decode("utf-8", "replace").strip()


def pump(generator: ExecGenerator, collector: Collector) -> ExitStatus | None:
    """Feed an exec's output to `collector`; None once it passed its cap.

    The generator is closed on the way out, however that is: an adapter kills a command
    whose generator is closed before it ended.
    """
    try:
        while True:
            try:
                stream, chunk = next(generator)
            except StopIteration as stop:
                status: ExitStatus = stop.value
                return status
            if not collector.add(stream, chunk):
                return None
    finally:
        generator.close()


def drain(
    generator: ExecGenerator, limit: int = DEFAULT_MAX_OUTPUT
) -> tuple[ExitStatus, bytes, bytes]:
    """Run an exec generator to its end: (status, stdout, stderr), at most `limit` bytes."""
    collector = Collector(limit)
    status = pump(generator, collector)
    if status is None:
        raise OutputTooLarge("a helper command's output", limit, "this is not expected of it")
    return status, collector.output("stdout"), collector.output("stderr")


def single_file_archive(name: str, data: bytes, mode: int) -> bytes:
    """A tar holding one regular file, for put_archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
