"""Every docker SDK exception mapped onto sandboxer's error tree, in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sandboxer.backend import (
    BackendUnavailable,
    EngineError,
    ImageNotFound,
    InvalidSpec,
    SandboxError,
    SandboxExists,
    SandboxNotFound,
)

from ._sdk import docker, requests

_errors = docker.errors
# Most specific first: the first class the exception is an instance of decides.
MAPPING: tuple[tuple[type[BaseException], type[SandboxError]], ...] = (
    (_errors.ImageNotFound, ImageNotFound),
    (_errors.NotFound, SandboxNotFound),
    (_errors.InvalidArgument, InvalidSpec),
    (_errors.InvalidRepository, InvalidSpec),
    (_errors.InvalidVersion, BackendUnavailable),
    (_errors.TLSParameterError, BackendUnavailable),
    (_errors.InvalidConfigFile, BackendUnavailable),
    (_errors.ContextException, BackendUnavailable),
    (_errors.APIError, EngineError),
    (_errors.DockerException, EngineError),
    (_errors.StreamParseError, EngineError),  # a RuntimeError, outside DockerException
    (requests.exceptions.ConnectionError, BackendUnavailable),
    (requests.exceptions.Timeout, BackendUnavailable),
    (requests.exceptions.RequestException, EngineError),
)
_FIX = "start dockerd (scripts/setup-engines.sh docker) or set DOCKER_HOST"


def translate(exc: BaseException) -> SandboxError:
    """The sandboxer error for a docker SDK (or transport) exception."""
    if (
        isinstance(exc, _errors.APIError)
        and exc.status_code == 409
        # A container's name ("already in use"), or a network's ("already exists").
        and any(words in str(exc) for words in ("already in use", "already exists"))
    ):
        return SandboxExists(str(exc))
    if isinstance(exc, _errors.ImageNotFound):
        # Images are made ready before create: this one left the engine meanwhile.
        return ImageNotFound(
            f"the Docker engine lost the image during the launch ({exc.explanation}); "
            "launch again to fetch it"
        )
    for source, target in MAPPING:
        if isinstance(exc, source):
            if target is BackendUnavailable:
                return BackendUnavailable("docker", str(exc), _FIX)
            if target is InvalidSpec:
                return InvalidSpec("docker", str(exc))
            return target(str(exc))
    return EngineError(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def docker_errors() -> Iterator[None]:
    """Re-raise any docker SDK exception as its sandboxer error."""
    try:
        yield
    except tuple(source for source, _ in MAPPING) as exc:
        raise translate(exc) from exc
