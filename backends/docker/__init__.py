"""Docker (or any Docker-API engine) backend: app containers through the docker SDK."""

from ._backend import DockerBackend

__all__ = ["DockerBackend"]
