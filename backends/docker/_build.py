"""A Dockerfile built by dockerd: its decoded build stream, for `sandboxer images build -t`
(`sandboxer.images.build` reads it and copies the result into the image store)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ._errors import docker_errors
from ._pull import PLATFORM


def build_stream(
    api: Any,
    context: Path,
    *,
    dockerfile: str,
    tag: str,
    build_args: Mapping[str, str],
    no_cache: bool,
) -> Iterator[Mapping[str, Any]]:
    """The engine's records (`stream`, `status`, `aux`, `error`) as `docker build` sees them;
    SDK failures, also those met while reading, become sandboxer errors."""
    with docker_errors():
        records = api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=dict(build_args),
            nocache=no_cache,
            rm=True,
            forcerm=True,  # no intermediate container survives a failed step
            decode=True,
            platform=PLATFORM,
        )
        for record in records:
            if isinstance(record, Mapping):
                yield record
