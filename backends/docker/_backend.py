"""DockerBackend: app containers through the docker SDK."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from sandboxer.backend import (
    LAUNCH,
    MANAGED,
    Availability,
    Backend,
    Capabilities,
    ExecGenerator,
    ExecRequest,
    Handle,
    LaunchPlan,
    NetworkDriver,
    ProcessChannel,
    ProcessRequest,
    PullPolicy,
    SandboxInfo,
    SandboxState,
    TerminalSize,
    UnsupportedFeature,
    Verdict,
    VolumeDriver,
    kill_exec,
    log_tail,
    logger,
    namespace_pid,
    new_exec_marker,
    signal_process,
    ticks_now,
)
from sandboxer.images import ImageConfig
from sandboxer.images.store import Progress

from . import _doctor
from ._accounts import check_user
from ._build import build_stream
from ._config import BUSYBOX_LABEL, aliases, create_arguments, first_link, joined_later
from ._endpoint import socket_path
from ._errors import docker_errors
from ._exec import ExecProcess, StartedExec, stream_exec
from ._images import SYSTEMD_IMAGE, DockerImages
from ._named_networks import DockerNetworks, is_named
from ._network import Networks
from ._runtimes import ENGINE_NAMES, DockerRuntimes
from ._sdk import docker
from ._volumes import DockerVolumes

_STATES = {
    "created": SandboxState.CREATED,
    "running": SandboxState.RUNNING,
    "paused": SandboxState.RUNNING,
    "restarting": SandboxState.RUNNING,
    "removing": SandboxState.DESTROYED,
    "exited": SandboxState.STOPPED,
    "dead": SandboxState.STOPPED,
}
_OURS = f"{MANAGED}=true"
# Docker ends a terminal's session when its input holds the detach keys (ctrl-p ctrl-q by
# default) and leaves the command running; none can be switched off, so a sequence that no
# one types or pastes stands in for them.
_DETACH_KEYS = ",".join(["ctrl-^", "ctrl-_"] * 8)
_LOG_LINES = 10_000


def _ours() -> dict[str, str]:
    # A new dict per call: the SDK adds keys to the filters it is given.
    return {"label": _OURS}


# Seconds to wait for Docker to report a started exec's pid (a busy engine is slow).
_PID_WAIT = 10.0


class DockerBackend(Backend):
    name: ClassVar[str] = "docker"
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
        start_seconds=0.3,
        runtimes=frozenset(ENGINE_NAMES),
        controls={
            "capabilities": "cap_drop/cap_add on the container (bounding and effective sets)",
            "no_new_privileges": "security_opt no-new-privileges",
            "seccomp": "seccomp allowlist (default deny) from the profile's OCI policy, "
            "in place of Docker's default",
            "read_only_root": "read-only root file system, tmpfs for the profile's writable paths",
            "non_root_user": "the container's processes run as the profile's uid:gid",
            "pids_limit": "pids cgroup (pids.max)",
            "memory_limit": "memory cgroup limit, swap disabled",
            "cpu_limit": "CFS quota (NanoCpus)",
            "network": "network_mode none: loopback only (with named networks: on those only)",
        },
    )

    diagnose = classmethod(_doctor.diagnose)

    _probe_client: ClassVar[Any] = None  # reused: building a client costs ~10x a ping

    def __init__(self) -> None:
        with docker_errors():
            # One client per process: every call reuses its connection pool.
            self._client = docker.from_env(max_pool_size=64, timeout=120)
        self._api = self._client.api
        if socket_path() is not None:
            # No proxy, netrc or CA bundle applies to a unix socket; requests would still
            # scan the environment for them on every call.
            self._api.trust_env = False
        # Sandboxes this process created: whether each has a private network to remove.
        self._networks: dict[str, bool] = {}
        self._engine_networks = Networks(self._client)
        self._named_networks = DockerNetworks(self._api)
        self._images = DockerImages(self._api)
        self._volumes = DockerVolumes(self._api)
        self._runtimes = DockerRuntimes(self._api, self._images)

    @classmethod
    def probe(cls) -> Availability:
        fix = "scripts/setup-engines.sh docker (installs docker.io and starts dockerd)"
        path = socket_path()
        if path is not None and not os.path.exists(path):
            return Availability(False, f"no Docker socket at {path}", fix)
        try:
            if cls._probe_client is None:
                cls._probe_client = docker.from_env(timeout=1)
            cls._probe_client.ping()
        except Exception as exc:
            cls._probe_client = None
            return Availability(False, f"dockerd does not answer: {exc}", fix)
        return Availability(True)

    def close(self) -> None:
        self._client.close()

    def image_config(self, image: str, pull: PullPolicy) -> ImageConfig:
        # The engine's own copy: the one create runs.
        return self._images.ready(image, pull).config

    def pull_image(self, image: str, policy: PullPolicy, progress: Progress | None = None) -> str:
        """Make `image` ready on the engine as a launch would (`images pull` asks this);
        its image id."""
        return self._images.image_id(self._images.ready(image, policy, progress))

    def build_image(
        self,
        context: Path,
        *,
        dockerfile: str,
        tag: str,
        build_args: Mapping[str, str],
        no_cache: bool,
    ) -> Iterator[Mapping[str, Any]]:
        """Build `dockerfile` in `context` as `tag` (`images build -t` asks this): the
        engine's decoded build stream."""
        return build_stream(
            self._api,
            context,
            dockerfile=dockerfile,
            tag=tag,
            build_args=build_args,
            no_cache=no_cache,
        )

    @classmethod
    def refusals(cls, plan: LaunchPlan) -> list[str]:
        found = super().refusals(plan)
        if plan.image == SYSTEMD_IMAGE:
            found.append(
                f"docker: {SYSTEMD_IMAGE} runs systemd as PID 1, which a Docker sandbox "
                "under sandboxer's profiles cannot (no writable cgroups, no CAP_SYS_ADMIN); "
                "use incus or libvirt"
            )
        if plan.network == "isolated" and plan.ports:
            # Docker publishes no ports from internal networks; refuse rather than drop them.
            found.append(
                "docker: ports cannot be published from an 'isolated' (internal) network; "
                "use network='bridge'"
            )
        if plan.networks and plan.hostname != plan.name:
            # Docker's DNS answers a container's host name on its networks too: one equal
            # to a peer's name would take that name over for every member.
            found.append(
                "docker: hostname: on named networks Docker's DNS answers the host name "
                "too, so it could take a peer's name; name the sandbox instead (name=)"
            )
        return found

    def check(self, plan: LaunchPlan) -> Verdict:
        # The plan's OCI runtime is one this dockerd has and can start a container with:
        # a host fact, probed on first use (see `DockerRuntimes`).
        verdict = super().check(plan)
        refusal = self._runtimes.refusal(plan.runtime)
        if refusal is None:
            return verdict
        return Verdict(statuses=verdict.statuses, refusals=(*verdict.refusals, refusal))

    def create(self, plan: LaunchPlan) -> Handle:
        image = self._images.ready(plan.image, plan.pull)
        runtime = self._runtimes.engine_name(plan.runtime)
        with docker_errors():
            network = self._default_link(plan)
            self._volumes.claim(plan)
            arguments = create_arguments(plan, image, network, runtime=runtime)
            container = self._client.containers.create(**arguments)
            for name in joined_later(plan):
                self._api.connect_container_to_network(container.id, name, aliases=aliases(plan))
            check_user(self._api, container.id, plan)
            container.start()
        self._named_networks.drop_default_route(container.id)
        return Handle(container.id, plan.name, container)

    def _default_link(self, plan: LaunchPlan) -> str | None:
        """The network the container is created on (None: network_mode none)."""
        # A private network of its own for "isolated", and for "bridge" beside named
        # networks (see `Networks.create_private`).
        private = plan.network == "isolated" or (plan.network == "bridge" and bool(plan.networks))
        self._networks[plan.name] = private
        if private:
            internal = plan.network == "isolated"
            # Named after the launch too: a named network may be called after the sandbox.
            own = f"{plan.name}-{plan.labels[LAUNCH][:12]}"
            return self._engine_networks.create_private(own, plan.labels, internal=internal)
        if plan.network == "bridge":
            return self._engine_networks.bridge()
        return first_link(plan)

    def busybox(self, handle: Handle) -> str | None:
        # The helper's mount point is fresh per container: create labels it (None on a
        # container made before that label, whose own tools then do).
        container = handle.native
        if container is None:
            with docker_errors():
                container = self._client.containers.get(handle.id)
        found = container.labels.get(BUSYBOX_LABEL)
        return str(found) if found else None

    def _start_exec(
        self, handle: Handle, request: ExecRequest, *, stdin: bool, tty: bool
    ) -> StartedExec:
        """Start `request` as the sandbox's user, environment and directory say, on a
        terminal if `tty`; its output and stdin on the returned socket."""
        # Every exec is marked, so a kill can tell its processes from another exec's.
        variable, marker = new_exec_marker()
        environment = {**request.env, variable: marker}
        started = ticks_now()
        with docker_errors():
            exec_id = self._api.exec_create(
                handle.id,
                list(request.argv),
                stdin=stdin,
                tty=tty,
                environment=environment,
                workdir=request.workdir,
                user=request.user or "",
                detach_keys=_DETACH_KEYS if tty else None,
            )["Id"]
            raw = self._api.exec_start(exec_id, socket=True, tty=tty)
        return StartedExec(
            exec_id,
            raw,
            kill=lambda: self._kill_exec(handle, exec_id, marker, started),
            exit_code=lambda: self._exit_code(exec_id),
        )

    def exec(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        started = self._start_exec(handle, request, stdin=request.stdin is not None, tty=False)
        return stream_exec(
            started.raw, request.stdin, request.timeout, started.kill, started.exit_code
        )

    def start_process(self, handle: Handle, request: ProcessRequest) -> ProcessChannel:
        terminal = request.terminal
        started = self._start_exec(handle, request.exec, stdin=True, tty=terminal is not None)
        exec_id = started.exec_id
        process = ExecProcess(
            started,
            terminal=terminal is not None,
            timeout=request.exec.timeout,
            send_signal=lambda signum: self._signal_exec(handle, exec_id, signum),
            resize=lambda size: self._resize_exec(exec_id, size),
        )
        try:
            if terminal is not None:
                # Docker's API (1.41) takes no size at start: set at once, as docker's CLI
                # does (a command that asks in its first milliseconds may still see 0x0).
                self._resize_exec(exec_id, terminal)
            host_pid = self._host_pid(exec_id)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that got here matters more
                started.kill()
                started.raw.close()
            raise
        process.pid = namespace_pid(host_pid) if host_pid and socket_path() else None
        return process

    def _host_pid(self, exec_id: str) -> int:
        """The exec's host pid, once the engine has started it (0 if it never says)."""
        # Before the engine starts it an exec is neither running nor ended (no ExitCode):
        # only a pid, or an exit, settles it.
        deadline = time.monotonic() + _PID_WAIT
        with docker_errors():
            while True:
                info = self._api.exec_inspect(exec_id)
                if info.get("Pid") or info.get("ExitCode") is not None:
                    return int(info.get("Pid") or 0)
                if time.monotonic() > deadline:
                    return 0
                time.sleep(0.01)

    def _signal_exec(self, handle: Handle, exec_id: str, signum: int) -> None:
        """`signum` to the exec's own process: Docker has no call for it, so through a
        pidfd from this host, once the process is proven to be the sandbox's."""
        with docker_errors():
            init = self._api.inspect_container(handle.id)["State"].get("Pid") or 0
            info = self._api.exec_inspect(exec_id)
        if not info.get("Running"):
            return
        if init and signal_process(info.get("Pid") or 0, init, signum):
            return
        with docker_errors():
            if not self._api.exec_inspect(exec_id).get("Running"):
                return  # it ended before the signal could reach it
        raise UnsupportedFeature(
            f"docker: cannot send signal {signum} to exec {exec_id[:12]} from this host "
            "(remote engine?); only SIGKILL reaches it"
        )

    def _resize_exec(self, exec_id: str, size: TerminalSize) -> None:
        with docker_errors():
            for attempt in range(100):
                try:
                    self._api.exec_resize(exec_id, height=size.rows, width=size.cols)
                    return
                except docker.errors.APIError:
                    info = self._api.exec_inspect(exec_id)
                    if not info.get("Running") and info.get("ExitCode") is not None:
                        # It ended meanwhile (crun keeps no pid then): nothing to resize.
                        return
                    if info.get("Running") or attempt == 99:
                        raise
                time.sleep(0.01)  # not started yet: its terminal comes with it

    def _kill_exec(self, handle: Handle, exec_id: str, marker: str, started: int) -> None:
        with docker_errors():
            init = self._api.inspect_container(handle.id)["State"].get("Pid") or 0
            root = self._api.exec_inspect(exec_id).get("Pid") or 0
        if not init or not kill_exec(marker, init, started, root=root):
            logger.warning("cannot kill exec %s from this host (remote engine?)", exec_id[:12])

    def _exit_code(self, exec_id: str) -> int:
        # The stream can close a moment before the engine records the exit code.
        with docker_errors():
            for _ in range(100):
                info = self._api.exec_inspect(exec_id)
                if not info.get("Running") and info.get("ExitCode") is not None:
                    return int(info["ExitCode"])
                time.sleep(0.01)
        return -1

    def stop(self, handle: Handle, timeout: float) -> None:
        with docker_errors():
            self._api.stop(handle.id, timeout=max(0, int(timeout)))

    def start(self, handle: Handle) -> Handle:
        # The container keeps its config (profile, limits, mounts, ports, user) and its
        # writable layer; tmpfs paths come back empty, the main process starts afresh.
        # Docker keeps its networks (named ones with their aliases) and joins them again.
        with docker_errors():
            self._api.start(handle.id)
        self._named_networks.drop_default_route(handle.id)
        return handle

    def remove(self, name: str, launch: str) -> None:
        # By the launch's own label and then by id: a container or network that merely
        # has the name (someone else's) is never touched.
        mine = {"label": f"{LAUNCH}={launch}"}
        with docker_errors():
            for container in self._api.containers(all=True, filters=dict(mine)):
                with contextlib.suppress(docker.errors.NotFound):
                    self._api.remove_container(container["Id"], force=True, v=True)
            if not self._networks.pop(name, True):
                return  # made here without a private network: nothing more to look for
            for network in self._api.networks(filters=dict(mine)):
                with contextlib.suppress(docker.errors.NotFound):
                    self._api.remove_network(network["Id"])

    def state(self, handle: Handle) -> SandboxState:
        with docker_errors():
            try:
                status = self._api.inspect_container(handle.id)["State"]["Status"]
            except Exception as exc:
                if "No such container" in str(exc):
                    return SandboxState.DESTROYED
                raise
        return _STATES.get(status, SandboxState.UNKNOWN)

    def logs(self, handle: Handle) -> str:
        with docker_errors():
            # Streamed, and only the tail kept: the log file itself is capped at create.
            chunks = self._api.logs(
                handle.id, stdout=True, stderr=True, stream=True, follow=False, tail=_LOG_LINES
            )
            return log_tail(chunks)

    def leftovers(self) -> list[SandboxInfo]:
        """Private networks (they carry a launch id) whose container is gone; named
        networks carry one of their own and are never a sandbox's leftover."""
        with docker_errors():
            networks = self._api.networks(filters={"label": [_OURS, LAUNCH]})
            live = {
                c["Labels"].get(LAUNCH) for c in self._api.containers(all=True, filters=_ours())
            }
        return [
            SandboxInfo(self.name, n["Id"], n["Name"], SandboxState.DESTROYED, n["Labels"])
            for n in networks
            if n["Labels"][LAUNCH] not in live and not is_named(n)
        ]

    def volumes(self) -> VolumeDriver:
        return self._volumes

    def networks(self) -> NetworkDriver:
        return self._named_networks

    def list_sandboxes(self) -> list[SandboxInfo]:
        with docker_errors():
            containers: list[dict[str, Any]] = self._api.containers(all=True, filters=_ours())
        return [
            SandboxInfo(
                backend=self.name,
                id=c["Id"],
                name=c["Names"][0].lstrip("/"),
                state=_STATES.get(c["State"], SandboxState.UNKNOWN),
                labels=c["Labels"],
            )
            for c in containers
        ]
