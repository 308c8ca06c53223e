"""OCI runtimes under dockerd (`SandboxSpec(runtime=...)`): the name dockerd knows each by,
whether dockerd has it (`/info` Runtimes), and whether it starts a container on this host.

Only runc and crun were run here: gVisor (runsc) and Kata cannot be installed on these
machines, so their names are the ones their install guides register, untested.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Mapping
from typing import Any

from sandboxer.backend import PullPolicy, logger, ownership_labels, timed

from ._errors import docker_errors
from ._images import DockerImages
from ._sdk import docker

# Each runtime's names as its install guide registers it with dockerd; the first found wins.
ENGINE_NAMES: Mapping[str, tuple[str, ...]] = {
    "runc": ("runc",),
    "crun": ("crun",),
    "runsc": ("runsc",),  # `runsc install` (gVisor)
    "kata": ("kata", "kata-runtime", "io.containerd.kata.v2"),
}
_RELOAD = "then reload dockerd (kill -HUP <dockerd pid>)"
FIXES: Mapping[str, str] = {
    "runc": "apt-get install -y runc (dockerd registers it itself)",
    "crun": "scripts/setup-engines.sh docker (installs crun and registers it in "
    "/etc/docker/daemon.json)",
    "runsc": "install gVisor (https://gvisor.dev/docs/user_guide/install/) and run "
    f"`runsc install`, {_RELOAD}",
    "kata": "install Kata Containers and register it in /etc/docker/daemon.json as 'kata' "
    f"(https://github.com/kata-containers/kata-containers/tree/main/docs/install), {_RELOAD}",
}
# A runtime is tried once per backend instance: `true` in the built-in image, no network.
_TRIAL_IMAGE = "sandboxer/minimal"
_TRIAL_SECONDS = 30


def engine_name(runtime: str, registered: Collection[str]) -> str | None:
    """dockerd's name for `runtime` among the `registered` ones (None: it has none)."""
    return next((name for name in ENGINE_NAMES[runtime] if name in registered), None)


def describe(info: Mapping[str, Any]) -> str:
    """dockerd's runtimes as `doctor` lists them, from its `/info`."""
    registered = sorted(info.get("Runtimes") or {})
    default = info.get("DefaultRuntime")
    return ", ".join(f"{name} (default)" if name == default else name for name in registered)


class DockerRuntimes:
    """Whether a plan's runtime can run on this dockerd, probed once per runtime and
    backend instance; safe to use from several threads."""

    def __init__(self, api: Any, images: DockerImages) -> None:
        self._api = api
        self._images = images
        self._lock = threading.Lock()
        self._info: Mapping[str, Any] | None = None
        self._refusals: dict[str, str | None] = {}

    def engine_name(self, runtime: str | None) -> str | None:
        """The name create passes as HostConfig.Runtime (None: dockerd's default)."""
        if runtime is None:
            return None
        return engine_name(runtime, self._registered()) or ENGINE_NAMES[runtime][0]

    def refusal(self, runtime: str | None) -> str | None:
        """Why `runtime` cannot run a sandbox here, naming the fix (None: it can)."""
        if runtime is None:
            return None
        with self._lock:
            if runtime not in self._refusals:
                self._refusals[runtime] = self._probe(runtime)
            return self._refusals[runtime]

    def _registered(self) -> Mapping[str, Any]:
        if self._info is None:
            with docker_errors():
                self._info = self._api.info()
        return self._info.get("Runtimes") or {}

    def _probe(self, runtime: str) -> str | None:
        registered = self._registered()
        name = engine_name(runtime, registered)
        if name is None:
            return (
                f"docker: OCI runtime {runtime!r} is not registered with dockerd (it has "
                f"{', '.join(sorted(registered)) or 'none'}); fix: {FIXES[runtime]}"
            )
        assert self._info is not None  # read by _registered
        if name == self._info.get("DefaultRuntime"):
            return None  # every other launch runs under it already
        failure = self._trial(name)
        if failure is None:
            return None
        logger.info("docker runtime %s cannot start a container: %s", name, failure)
        return (
            f"docker: OCI runtime {runtime!r} (dockerd's {name!r}) cannot start a container "
            f"on this host: {failure}; use another runtime (runc is dockerd's own)"
        )

    def _trial(self, name: str) -> str | None:
        """Why a container under dockerd's runtime `name` does not run `true` (None: it does).

        Labelled as ours, so that gc removes it should this process die meanwhile."""
        image = self._images.ready(_TRIAL_IMAGE, PullPolicy.MISSING).reference
        with docker_errors(), timed("docker runtime trial", runtime=name):
            config = self._api.create_host_config(runtime=name, network_mode="none")
            made = self._api.create_container(
                image, ["true"], labels=ownership_labels(), host_config=config
            )
            try:
                self._api.start(made["Id"])
                code = self._api.wait(made["Id"], timeout=_TRIAL_SECONDS)["StatusCode"]
            except docker.errors.APIError as exc:
                return str(exc.explanation or exc)
            finally:
                with contextlib.suppress(docker.errors.APIError):
                    self._api.remove_container(made["Id"], force=True)
        return None if code == 0 else f"`true` exited with {code}"
