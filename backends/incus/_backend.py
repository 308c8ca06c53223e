"""IncusBackend: system containers (LXC) through Incus' REST API, with pylxd."""

from __future__ import annotations

import contextlib
import functools
import math
import posixpath
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import quote

import attrs

from sandboxer.backend import (
    EXEC_MARKER,
    EXEC_USER,
    LAUNCH,
    LOGS_MAX,
    MANAGED,
    ArchiveStream,
    Availability,
    Backend,
    BackendUnavailable,
    Capabilities,
    Check,
    ControlStatus,
    EngineError,
    ExecGenerator,
    ExecRequest,
    ExecTimeout,
    Handle,
    LaunchPlan,
    NetworkDriver,
    OutputTooLarge,
    ProcessChannel,
    ProcessRequest,
    PullPolicy,
    SandboxExists,
    SandboxInfo,
    SandboxNotFound,
    SandboxState,
    VolumeDriver,
    exec_pid,
    kill_exec,
    log_tail,
    logger,
    new_exec_marker,
    ticks_now,
    timed,
)
from sandboxer.images import ImageConfig, is_builtin

from . import _diagnose, _exec, _files, _prepare
from ._boot import Boot
from ._client import Endpoint, Incus
from ._config import (
    BUSYBOX_KEY,
    LABEL_PREFIX,
    WORKDIR_KEY,
    Named,
    Nic,
    empty_environment,
    enforcement_overrides,
    instance_request,
    labels_from_config,
)
from ._console import console_tail, log_directory
from ._errors import incus_errors
from ._images import Images, Source, image_name
from ._named_networks import NAME_KEY, IncusNetworks, gone_members
from ._network import Networks, retry_address_conflicts
from ._process import IncusProcess
from ._refusals import refusals
from ._sdk import pylxd
from ._stop_hook import LocalDaemon, fast_stop
from ._users import Identity, is_numeric, resolve
from ._volumes import IncusVolumes
from ._websocket import WebSocket

_STATES = {
    "running": SandboxState.RUNNING,
    "frozen": SandboxState.RUNNING,
    "stopped": SandboxState.STOPPED,
    "stopping": SandboxState.RUNNING,
    "starting": SandboxState.CREATED,
}
_REMOVE_SECONDS = 30.0
# /etc/passwd and /etc/group, read to map a user name: real ones are a few KiB.
_ACCOUNTS_MAX = 1024 * 1024
_RETRY_SECONDS = 0.25


@attrs.define
class _Known:
    """What this process learned about one sandbox, so that exec asks the engine once."""

    user: str | None  # who exec runs as when the request names nobody
    workdir: str = "/"  # where exec runs when the request names no directory
    isolated: bool = True  # may have a private network to remove (unknown: assume so)
    accounts: tuple[str, str] | None = None  # its /etc/passwd and /etc/group
    workdirs: set[str] = attrs.Factory(lambda: {"/"})  # directories seen to exist
    empty_env: tuple[str, ...] = ()  # variables set to "", which exec must add itself
    busybox: str | None = None  # the file calls' (`Boot.busybox`)
    init: int = 0  # its init's host pid, last seen (for files: see _files)


class IncusBackend(Backend):
    name: ClassVar[str] = "incus"
    takes_extras: ClassVar[bool] = True
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="system",
        isolation="user",
        init=True,
        custom_kernel=False,
        nested=True,
        networks=frozenset({"none", "isolated", "bridge"}),
        limits=frozenset({"cpu_limit", "memory_limit", "pids_limit"}),
        mounts=True,
        ports=True,
        start_seconds=0.3,  # measured: launch of a hardened busybox sandbox, median ~0.3 s
        controls={
            "capabilities": "raw.lxc lxc.cap.keep/lxc.cap.drop: bounding set of the init "
            "and of every exec (loopback is raised from the host, so none is kept for it)",
            "no_new_privileges": "raw.lxc lxc.no_new_privs for the init and every exec",
            "seccomp": "raw.seccomp: the profile's allowlist (default deny) as LXC's own "
            "policy, in place of Incus' default; loaded on the init and on every exec",
            "read_only_root": "read-only root disk device; the profile's tmpfs mounts "
            "via raw.lxc lxc.mount.entry",
            "non_root_user": "PID 1 (the built-in init or sandboxer's helper init of OCI "
            "images, raw.lxc lxc.init.uid/gid), what it starts (spec.command) and every "
            "exec run as the profile's uid:gid, in a user namespace with an isolated idmap",
            "pids_limit": "limits.processes (pids cgroup)",
            "memory_limit": "limits.memory (memory cgroup), swap off",
            "cpu_limit": "limits.cpu (CPU count) plus limits.cpu.allowance for fractions",
            "network": "no NIC: loopback only",
        },
    )

    def __init__(self) -> None:
        self._incus = Incus(Endpoint.from_env())
        self._images = Images(self._incus)
        self._networks = Networks(self._incus)
        self._named = IncusNetworks(self._incus)
        self._pool: str | None = None
        self._volumes = IncusVolumes(self._incus, self._root_pool)
        self._lock = threading.Lock()
        self._known: dict[str, _Known] = {}

    @classmethod
    def probe(cls) -> Availability:
        return _diagnose.probe()

    @classmethod
    def diagnose(cls) -> list[Check]:
        return _diagnose.diagnose()

    def close(self) -> None:
        self._incus.close()

    @classmethod
    def refusals(cls, plan: LaunchPlan) -> list[str]:
        return super().refusals(plan) + refusals(plan)

    def enforcement(self, plan: LaunchPlan) -> dict[str, ControlStatus]:
        statuses = super().enforcement(plan)
        # Which init boots decides who PID 1 is: for a name that may be an Incus alias
        # (no registry host), Incus is asked once whether it holds one.
        overrides = enforcement_overrides(plan, self._images.init(plan))
        statuses.update(
            (control, status) for control, status in overrides.items() if control in statuses
        )
        return statuses

    def image_config(self, image: str, pull: PullPolicy) -> ImageConfig:
        # An image Incus holds itself (an alias) has no OCI config: nothing exposed.
        if not is_builtin(image) and not self._images.from_store(image):
            return ImageConfig()
        return super().image_config(image, pull)

    # create --------------------------------------------------------------------------
    def _root_pool(self) -> str:
        with self._lock, incus_errors():
            if self._pool is None:
                self._pool = _diagnose.root_pool(self._incus.client)
            if self._pool is None:
                raise BackendUnavailable(
                    "incus",
                    f"the default profile has no root disk and {_diagnose.POOL} is unset",
                    "incus profile device add default root disk path=/ pool=default",
                )
            return self._pool

    def _nic(self, plan: LaunchPlan) -> Callable[[], Nic | None]:
        if plan.network == "isolated":
            nic = self._networks.create_isolated(plan.name, plan.labels)
            return lambda: nic
        if plan.network == "bridge":
            return self._networks.bridge_nic()
        return lambda: None

    def create(self, plan: LaunchPlan) -> Handle:
        pool = self._root_pool()
        # First: a pull or a conversion that fails leaves nothing behind.
        source = self._images.source(plan)
        boot = source.boot(plan)
        # Before joining: a namesake's launch must not touch a live member's DNS record.
        if self._named.exists(plan.name):
            raise SandboxExists(f"an incus instance called {plan.name!r} exists")
        nic = self._nic(plan)
        named = self._named.join(plan)
        points, script = _prepare.paths(plan, boot, source.exists), _prepare.service(plan, boot)
        start = not points and script is None
        self._volumes.claim(plan, pool)
        api = self._incus.api.instances[plan.name]
        # Chosen here rather than read back from Incus after the create: one call less.
        identity = str(uuid.uuid4())
        try:
            retry_address_conflicts(
                lambda: self._post(plan, source, boot, pool, (nic(), named), start, identity)
            )
            if not start:
                _prepare.Preparer(self._incus, plan.name).run(points, script)
                with timed("incus start", sandbox=plan.name), incus_errors():
                    self._incus.wait(api.state.put(json={"action": "start"}))
        except EngineError as exc:
            if type(exc) is not EngineError or "forkstart" not in str(exc):
                raise
            raise EngineError(f"{exc}\n{self._start_errors(plan.name)}") from exc
        self._known[plan.name] = _Known(
            boot.user,
            boot.workdir,
            plan.network == "isolated",
            empty_env=boot.empty_environment,
            busybox=boot.busybox,
        )
        return Handle(identity, plan.name)

    def _post(
        self,
        plan: LaunchPlan,
        source: Source,
        boot: Boot,
        pool: str,
        links: tuple[Nic | None, Named],
        start: bool,
        identity: str,
    ) -> None:
        for retry in (True, False):
            body = instance_request(plan, source.fingerprint, pool, links[0], start, boot, links[1])
            body["config"]["volatile.uuid"] = identity  # the instance's id, as Incus reports it
            if self._daemon is not None:  # stops in 0.1 s rather than 0.6 (see _stop_hook)
                lines = self._daemon.post_stop_lines(plan.name)
                body["config"]["raw.lxc"] += "\n" + "\n".join(lines)
            try:
                with timed("incus create", sandbox=plan.name, start=start), incus_errors():
                    self._incus.wait(self._incus.api.instances.post(json=body))
                return
            except EngineError as exc:
                # Someone deleted the image this process had resolved: look it up again.
                if not retry or "Image not provided" not in str(exc):
                    raise
                self._images.forget(image_name(plan))
                source = self._images.source(plan)

    @functools.cached_property
    def _daemon(self) -> LocalDaemon | None:
        return fast_stop(self._incus)

    def _start_errors(self, name: str) -> str:
        """LXC's own account of a failed start: its log's error lines."""
        try:
            with incus_errors():
                log = self._incus.api.instances[name].logs["lxc.log"].get(is_api=False)
        except EngineError:
            return "(no LXC log)"
        lines = log.content.decode("utf-8", "replace").splitlines()
        errors = [line.split(" - ", 2)[-1] for line in lines if " ERROR " in line]
        return "LXC: " + " | ".join(errors[:6]) if errors else "(LXC logged no error)"

    # converted images --------------------------------------------------------------------
    def converted(self) -> list[str]:
        """The digests of the store images Incus holds a converted copy of."""
        return self._images.converter.converted()

    def remove_converted(self, digest: str) -> bool:
        """Delete Incus' converted copies of `digest` ("sha256:..."); whether there was one."""
        return self._images.converter.remove(digest)

    # exec ----------------------------------------------------------------------------
    def _sandbox(self, name: str) -> _Known:
        known = self._known.get(name)
        if known is None:  # a sandbox this process found rather than launched
            with incus_errors():
                config = self._incus.api.instances[quote(name, safe="")].get().json()
            settings = config["metadata"]["config"]
            known = _Known(
                settings.get(LABEL_PREFIX + EXEC_USER),
                settings.get(WORKDIR_KEY, "/"),
                empty_env=empty_environment(settings),
                busybox=settings.get(BUSYBOX_KEY),
            )
            self._known[name] = known
        return known

    def busybox(self, handle: Handle) -> str | None:
        return self._sandbox(handle.name).busybox

    def _identity(self, name: str, user: str) -> Identity:
        if is_numeric(user):  # "uid:gid" needs no account file
            return resolve(user, "", "")
        known = self._sandbox(name)
        if known.accounts is None:
            known.accounts = (self._read(name, "/etc/passwd"), self._read(name, "/etc/group"))
        return resolve(user, *known.accounts)

    def _check_workdir(self, name: str, path: str) -> None:
        """LXC falls back to / when it cannot enter the cwd: refuse instead of ignoring it."""
        known = self._sandbox(name)
        if path in known.workdirs:
            return
        if self._incus.file_type(name, path) != "directory":
            raise EngineError(f"workdir {path} is not a directory in sandbox {name}")
        known.workdirs.add(path)

    def _read(self, name: str, path: str) -> str:
        """A small text file of the sandbox's (its accounts): streamed, and refused past
        _ACCOUNTS_MAX, since the sandbox writes what it holds."""
        with incus_errors():
            try:
                response = self._incus.api.instances[name].files.get(
                    params={"path": path}, is_api=False, stream=True
                )
            except pylxd.exceptions.NotFound:
                return ""
            with contextlib.closing(response):
                data = response.raw.read(_ACCOUNTS_MAX + 1, decode_content=False)
        if len(data) > _ACCOUNTS_MAX:
            raise OutputTooLarge(
                f"{path} in sandbox {name}",
                _ACCOUNTS_MAX,
                "run commands as a numeric uid:gid instead of a user name",
            )
        return str(data.decode("utf-8", "replace"))

    def _exec_body(self, name: str, request: ExecRequest, marker: str) -> dict[str, Any]:
        """The exec endpoint's request: user, directory and environment resolved as every
        command in the sandbox gets them, with the marker a kill finds its processes by."""
        # None: the sandbox's own user, as Docker's exec defaults to the container's.
        user = request.user if request.user is not None else self._sandbox(name).user
        identity = self._identity(name, user) if user else Identity(0, 0)
        workdir = request.workdir or self._sandbox(name).workdir
        self._check_workdir(name, workdir)
        environment = dict(request.env)
        for key in self._sandbox(name).empty_env:  # Incus' config could not hold them
            environment.setdefault(key, "")
        if identity.home and "HOME" not in environment:
            environment["HOME"] = identity.home
        environment[EXEC_MARKER] = marker
        return {
            "command": list(request.argv),
            "environment": environment,
            "wait-for-websocket": True,
            "interactive": False,
            "cwd": workdir,
            "user": identity.uid,
            "group": identity.gid,
        }

    def _killer(self, name: str, marker: str) -> Callable[[WebSocket], None]:
        """What kills the exec marked `marker`, started now, and everything it started."""
        started = ticks_now()

        def kill(control: WebSocket) -> None:
            # The whole tree from the host where its pids are visible; else the command,
            # through the engine.
            init = self._init_pid(name) if self._incus.endpoint.is_local else 0
            if not init or not kill_exec(marker, init, started):
                _exec.signal_command(control, 9)

        return kill

    def exec(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        # Every exec is marked, so a kill can tell its processes from another exec's.
        marker = new_exec_marker()[1]
        body = self._exec_body(handle.name, request, marker)
        kill = self._killer(handle.name, marker)
        deadline = _exec.deadline_after(request.timeout)

        def attempt() -> ExecGenerator:
            waiter, sockets = _exec.start(self._incus, handle.name, body)
            return _exec.stream(waiter, sockets, request.stdin, deadline, kill)

        try:
            first: ExecGenerator | None = attempt()  # eager: SandboxNotFound surfaces here
        except _exec.NotStarted:
            first = None
        return self._retrying(first, attempt, deadline)

    def start_process(self, handle: Handle, request: ProcessRequest) -> ProcessChannel:
        marker = new_exec_marker()[1]
        body = self._exec_body(handle.name, request.exec, marker)
        if request.terminal is not None:
            size = request.terminal
            body.update(interactive=True, width=size.cols, height=size.rows)
        kill = self._killer(handle.name, marker)
        deadline = _exec.deadline_after(request.exec.timeout)
        waiter, sockets = _exec.start(self._incus, handle.name, body)
        return IncusProcess(
            waiter,
            sockets,
            terminal=request.terminal is not None,
            deadline=deadline,
            kill=kill,
            pid_finder=lambda: self._pid_finder(handle.name, marker),
        )

    def _pid_finder(self, name: str, marker: str) -> Callable[[], int | None] | None:
        """What finds the exec marked `marker`'s pid; None where its processes are not
        visible (a remote engine)."""
        init = self._init_pid(name) if self._incus.endpoint.is_local else 0
        return functools.partial(exec_pid, marker, init) if init else None

    def _init_pid(self, name: str) -> int:
        """The host pid of the container's init (0 if it has none)."""
        with incus_errors():
            state = self._incus.api.instances[quote(name, safe="")].state.get().json()
        return max(0, int(state["metadata"].get("pid") or 0))

    @staticmethod
    def _retrying(
        current: ExecGenerator | None,
        attempt: Callable[[], ExecGenerator],
        deadline: float | None,
    ) -> ExecGenerator:
        """Run the exec; while the sandbox has no room to start it (pids limit reached,
        often by a fork bomb's leftovers), try again until the exec's own deadline."""
        while True:
            try:
                if current is None:
                    current = attempt()
                return (yield from current)
            except _exec.NotStarted as exc:
                if deadline is None or time.monotonic() + _RETRY_SECONDS > deadline:
                    raise EngineError(
                        f"{exc}: the sandbox may be at its pids limit (an exec with a "
                        "timeout waits for room until then)"
                    ) from exc
                time.sleep(_RETRY_SECONDS)
                current = None

    # files: one regular file straight through the sandbox's root as its user where
    # that works (see _files); else, and for trees, tar through exec ---------------------
    def _root(self, name: str) -> _files.Root | None:
        """The sandbox's root for one call, if files can move that way here. Opened anew
        each time: nothing of the sandbox is held open between calls (a mount kept busy
        could fail its removal)."""
        if not (self._incus.endpoint.is_local and _files.supported()):
            return None
        known = self._sandbox(name)
        identity = self._identity(name, known.user) if known.user else Identity(0, 0)
        cgroup = f"/lxc.payload.{name}"
        for fresh in (False, True):  # the init seen last, else (restarted?) the engine's
            if fresh or not known.init:
                known.init = self._init_pid(name)
            if known.init:
                root = _files.open_root(known.init, cgroup, identity.uid, identity.gid)
                if root is not None:
                    return root
        return None

    def put_archive(self, handle: Handle, directory: str, data: bytes, timeout: float) -> None:
        member = _files.single_file(data)
        root = self._root(handle.name) if member is not None else None
        if root is not None and member is not None:
            try:
                return _files.as_user(
                    root, lambda: _files.replace(root, directory, member), timeout
                )
            except ExecTimeout:
                raise
            except OSError:
                pass  # refused, or not as simple: tar says why, in its own words
        super().put_archive(handle, directory, data, timeout)

    def get_archive(self, handle: Handle, path: str, timeout: float, limit: int) -> ArchiveStream:
        root = self._root(handle.name)
        if root is not None:
            try:
                fd = _files.as_user(root, lambda: _files.open_regular(root, path), timeout)
            except ExecTimeout:
                raise
            except OSError:
                fd = None  # refused, or missing: tar says so, in its own words
            if fd is not None:
                return _files.archive_of(fd, posixpath.basename(path), path, timeout)
        return super().get_archive(handle, path, timeout, limit)

    # lifecycle -----------------------------------------------------------------------
    def _set_state(self, name: str, action: str, **options: Any) -> None:
        api = self._incus.api.instances[name].state
        with incus_errors():
            self._incus.wait(api.put(json={"action": action, **options}))

    def stop(self, handle: Handle, timeout: float) -> None:
        if self.state(handle) is not SandboxState.RUNNING:
            return
        if timeout >= 1:
            # SIGPWR to the init, which stops its services; Incus fails it past the timeout.
            try:
                self._set_state(handle.name, "stop", timeout=math.ceil(timeout), force=False)
                return
            except EngineError as exc:
                logger.debug("graceful stop of %s: %s; forcing it", handle.name, exc)
        try:
            self._set_state(handle.name, "stop", force=True)
        except EngineError:
            if self.state(handle) is SandboxState.RUNNING:
                raise  # not merely "already stopped" by the init in the meantime

    def start(self, handle: Handle) -> Handle:
        # The instance keeps its config and devices (profile, limits, mounts, ports) and
        # its root disk; the profile's tmpfs paths come back empty, its init boots afresh.
        if self.state(handle) is not SandboxState.RUNNING:
            with timed("incus start", sandbox=handle.name):
                self._set_state(handle.name, "start")
        return handle

    def _launched_by(self, quoted: str, launch: str) -> bool:
        """Whether the instance called `quoted` is there and carries the launch id."""
        with incus_errors():
            try:
                config = self._incus.api.instances[quoted].get().json()["metadata"]["config"]
            except pylxd.exceptions.NotFound:
                return False
        return bool(config.get(LABEL_PREFIX + LAUNCH) == launch)

    def remove(self, name: str, launch: str) -> None:
        quoted = quote(name, safe="")
        # An instance that merely has the name (someone else's) is not touched.
        if self._launched_by(quoted, launch):
            self._delete(quoted, name)
        known = self._known.pop(name, None)
        if known is None or known.isolated:
            self._networks.remove_isolated(name, launch)
        # Its named networks stay (they are the caller's): only its DNS records go.
        self._named.leave(name, launch)

    def _delete(self, quoted: str, name: str) -> None:
        deadline = time.monotonic() + _REMOVE_SECONDS
        while True:
            try:
                # Forced: the sandbox is going away, its services need no grace.
                self._set_state(quoted, "stop", force=True)
            except SandboxNotFound:
                break
            except EngineError as exc:
                logger.debug("force stop of %s: %s (deleting anyway)", name, exc)
            try:
                with incus_errors():
                    self._incus.wait(self._incus.api.instances[quoted].delete())
                break
            except SandboxNotFound:
                break
            except EngineError as exc:
                # Right after a failed start Incus still cleans up and calls it running.
                if "running" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def state(self, handle: Handle) -> SandboxState:
        with incus_errors():
            try:
                status = self._incus.api.instances[handle.name].state.get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return SandboxState.DESTROYED
        return _STATES.get(str(status["status"]).lower(), SandboxState.UNKNOWN)

    def logs(self, handle: Handle) -> str:
        """The console: what the init and its services (spec.command among them) printed."""
        with incus_errors():
            console = self._incus.api.instances[handle.name].console
            response = console.get(is_api=False, stream=True, timeout=30)
            with contextlib.closing(response):
                drained = log_tail(response.iter_content(64 * 1024))
        endpoint = self._incus.endpoint
        if endpoint.is_local:
            whole = console_tail(log_directory(endpoint.address), handle.name, LOGS_MAX)
            if whole is not None:
                return whole.decode("utf-8", "replace")
        return drained

    def leftovers(self) -> list[SandboxInfo]:
        """Private networks (they carry a launch id), and named networks' DNS records,
        whose instance is gone."""
        with incus_errors():
            networks = self._incus.api.networks.get(params={"recursion": 1}).json()["metadata"]
        live = {info.labels.get(LAUNCH) for info in self.list_sandboxes()}
        found = []
        for network in networks:
            if NAME_KEY in (network.get("config") or {}):
                # A named network outlives its members; a gone member's DNS record not.
                found += gone_members(network["config"], live)
                continue
            labels = labels_from_config(network.get("config") or {})
            launch = labels.get(LAUNCH)
            if labels.get(MANAGED) == "true" and launch and launch not in live:
                sandbox = labels.get("sandboxer.sandbox", network["name"])
                found.append(
                    SandboxInfo(self.name, network["name"], sandbox, SandboxState.DESTROYED, labels)
                )
        return found

    def volumes(self) -> VolumeDriver:
        return self._volumes

    def networks(self) -> NetworkDriver:
        return self._named

    def list_sandboxes(self) -> list[SandboxInfo]:
        with incus_errors():
            instances = self._incus.api.instances.get(params={"recursion": 1}).json()["metadata"]
        return [
            SandboxInfo(
                backend=self.name,
                id=instance["config"].get("volatile.uuid", instance["name"]),
                name=instance["name"],
                state=_STATES.get(str(instance["status"]).lower(), SandboxState.UNKNOWN),
                labels=labels_from_config(instance["config"]),
            )
            for instance in instances
            if instance["config"].get(LABEL_PREFIX + MANAGED) == "true"
        ]
