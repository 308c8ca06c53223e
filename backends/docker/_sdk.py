"""The docker SDK, or BackendUnavailable with the install hint when it is missing."""

from sandboxer.backend import BackendUnavailable

try:
    import docker
    import docker.errors
    import requests.exceptions
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendUnavailable(
        "docker", f"the docker SDK is not installed ({exc})", "pip install 'docker>=7.0'"
    ) from exc

__all__ = ["docker", "requests"]
