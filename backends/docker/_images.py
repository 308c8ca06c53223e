"""The image a launch creates its container from, made ready on the engine:

- the busybox built-ins (`sandboxer/minimal`, `sandboxer/system`): imported once;
- the Debian built-ins: from sandboxer's image store, loaded once with skopeo under a name
  that carries their digest (a second launch finds it and loads nothing);
- anything else is a registry reference, pulled by dockerd under the plan's pull policy.

Built-ins run nothing of their own: without a command their sandbox idles. A registry
image's config (Entrypoint, Cmd) decides that instead. A cached built-in costs no engine
call; a registry image one inspect (the pull policy asks whether it is there), its config
parsed once per image id.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

import attrs

from sandboxer.backend import EngineError, ImageNotFound, PullPolicy, logger, timed
from sandboxer.images import (
    IMAGE_VERSION,
    ImageConfig,
    build_rootfs_tar,
    is_builtin,
    parse_reference,
)
from sandboxer.images.debian import BUILTIN_OCI_IMAGES
from sandboxer.images.store import LocalImage, Progress, default_store

from ._errors import docker_errors
from ._pull import pull
from ._sdk import docker

SYSTEMD_IMAGE = "sandboxer/systemd"  # systemd as PID 1: refused here (see refusals)
_SKOPEO_SECONDS = 900  # loading a Debian image into dockerd takes seconds; a hang must end
_SKOPEO_FIX = "apt-get install -y skopeo"
_STDERR_KEPT = 4000


@attrs.frozen
class ReadyImage:
    """What `containers.create` takes as its image, and what decides its main process."""

    reference: str  # a name:tag, or the image id of a registry image (exactly what was inspected)
    config: ImageConfig  # empty for built-ins: they run nothing unless told
    builtin: bool  # built-ins hold `sleep`; registry images may not


_NOTHING_OF_ITS_OWN = ImageConfig()


class DockerImages:
    """Makes images ready on one engine; safe to use from several threads."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self._ready: dict[str, ReadyImage] = {}  # built-ins already on the engine, by name
        self._configs: dict[str, ImageConfig] = {}  # registry images' configs, by image id
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}  # one per image: others go on meanwhile

    def ready(self, image: str, policy: PullPolicy, progress: Progress | None = None) -> ReadyImage:
        if is_builtin(image):
            return self._busybox_builtin(image)
        if image in BUILTIN_OCI_IMAGES:
            return self._store_builtin(default_store().resolve(image, policy, progress))
        return self._registry_image(image, policy, progress)

    def image_id(self, ready: ReadyImage) -> str:
        info = self._inspect(ready.reference)
        if info is None:
            raise ImageNotFound(f"{ready.reference} left the Docker engine; launch again")
        return str(info["Id"])

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _inspect(self, name: str) -> dict[str, Any] | None:
        with docker_errors():
            try:
                info: dict[str, Any] = self._api.inspect_image(name)
            except docker.errors.ImageNotFound:
                return None
        return info

    def _busybox_builtin(self, image: str) -> ReadyImage:
        name = f"{image}:{IMAGE_VERSION}"
        found = self._ready.get(name)
        if found is not None:
            return found
        with self._lock(name):
            if name not in self._ready and self._inspect(name) is None:
                with docker_errors(), timed("docker image build", image=name):
                    logger.info("building %s from busybox-static (first use)", name)
                    self._api.import_image_from_data(
                        build_rootfs_tar(),
                        repository=image,
                        tag=IMAGE_VERSION,
                        changes=['CMD ["/bin/sh"]', "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                    )
            return self._ready.setdefault(name, ReadyImage(name, _NOTHING_OF_ITS_OWN, True))

    def _store_builtin(self, local: LocalImage) -> ReadyImage:
        name = f"{local.reference}:{local.digest.removeprefix('sha256:')[:16]}"
        found = self._ready.get(name)
        if found is not None:
            return found
        with self._lock(name):
            if name not in self._ready and self._inspect(name) is None:
                with timed("docker image load", image=name):
                    logger.info("loading %s into Docker (first use)", name)
                    _skopeo_load(local, name)
                    # Also the plain name, so a Dockerfile can say `FROM sandboxer/debian`.
                    with docker_errors():
                        self._api.tag(name, local.reference, "latest")
            return self._ready.setdefault(name, ReadyImage(name, _NOTHING_OF_ITS_OWN, True))

    def _registry_image(
        self, image: str, policy: PullPolicy, progress: Progress | None
    ) -> ReadyImage:
        reference = parse_reference(image)
        # By digest when pinned: a tag beside a digest says nothing Docker would use.
        name = f"{reference.name}@{reference.digest}" if reference.pinned else str(reference)
        with self._lock(name):
            info = None if policy is PullPolicy.ALWAYS else self._inspect(name)
            if info is None:
                if policy is PullPolicy.NEVER:
                    raise ImageNotFound(
                        f"{image} is not on the Docker engine and pull='never' forbids "
                        f"fetching it; fix: sandboxer images pull {image} (or docker pull "
                        f"{image}), or launch with pull='missing'"
                    )
                with docker_errors(), timed("docker pull", image=name):
                    pull(self._api, reference, progress)
                info = self._inspect(name)
                if info is None:
                    raise ImageNotFound(f"{image} was pulled but is not on the Docker engine")
        return ReadyImage(str(info["Id"]), self._config(info), builtin=False)

    def _config(self, info: dict[str, Any]) -> ImageConfig:
        image_id = str(info["Id"])
        config = self._configs.get(image_id)
        if config is None:
            try:
                config = ImageConfig.from_oci({"config": info.get("Config")})
            except ValueError as exc:
                raise EngineError(f"image {image_id}: {exc}") from exc
            self._configs[image_id] = config
        return config


def _skopeo_load(local: LocalImage, name: str) -> None:
    """Copy the store's OCI layout into dockerd as `name`."""
    argv = ["skopeo", "copy", "--quiet"]
    host = os.environ.get("DOCKER_HOST")
    if host:
        argv.append(f"--dest-daemon-host={host}")
    argv += [f"oci:{local.layout}:{local.layout_tag}", f"docker-daemon:{name}"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=_SKOPEO_SECONDS, check=False)
    except FileNotFoundError as exc:
        raise ImageNotFound(f"loading {name} into Docker needs skopeo; fix: {_SKOPEO_FIX}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"loading {name} into Docker took over {_SKOPEO_SECONDS}s") from exc
    if done.returncode != 0:
        error = done.stderr.decode("utf-8", "replace").strip()[-_STDERR_KEPT:]
        raise EngineError(f"loading {name} into Docker failed: {error}")
