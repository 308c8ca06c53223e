"""Build an image from a Dockerfile through the Docker engine, then copy it into the image
store, so that the same image runs on every engine (Incus and libvirt start from the store).

The arguments are checked whole before any engine is touched (`build_request`). The engine
side is two small interfaces: the Docker backend's `build_image` (the engine's decoded build
stream) and the store's `import_docker` (a copy of a Docker engine image, by name).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from .._errors import InvalidSpec, SandboxError
from .debian import BUILTIN_OCI_IMAGES
from .reference import parse_reference
from .rootfs import BUILTIN_IMAGES
from .store import LocalImage, Progress

BUILTIN_NAMES = (*BUILTIN_IMAGES, *BUILTIN_OCI_IMAGES)
Output = Callable[[str], None]

DOCKERFILE_NAMES = ("Dockerfile", "Containerfile")
_BUILD_ARG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STEP = re.compile(r"Step (\d+)/(\d+) : ")
# A build step may print without line breaks; no more than this is held before printing.
_MAX_PENDING = 4096


class BuildFailed(SandboxError):
    """The engine could not build the Dockerfile; the message is the engine's."""


@runtime_checkable
class DockerBuilder(Protocol):
    """What the Docker backend offers for builds: the engine's decoded `/build` stream."""

    def build_image(
        self,
        context: Path,
        *,
        dockerfile: str,
        tag: str,
        build_args: Mapping[str, str],
        no_cache: bool,
    ) -> Iterable[Mapping[str, Any]]: ...


class ImportsFromDocker(Protocol):
    """The image store's side: copy a Docker engine image into the store (`LocalImage`)."""

    def import_docker(self, name: str, progress: Progress | None = None) -> LocalImage: ...


@attrs.frozen
class BuildRequest:
    """A checked build: a context directory, a Dockerfile inside it, a tag, arguments."""

    context: Path
    dockerfile: str  # relative to the context, as the engine takes it
    tag: str  # the reference as the caller wrote it (Docker normalises it the same way)
    build_args: Mapping[str, str]
    no_cache: bool = False

    @property
    def reference(self) -> str:
        """The canonical reference the image is known by in the store."""
        return str(parse_reference(self.tag))


@attrs.frozen
class BuiltImage:
    reference: str
    image_id: str  # the Docker engine's image id
    local: LocalImage


def build_request(
    context: str,
    tag: str,
    dockerfile: str | None = None,
    build_args: Sequence[str] = (),
    no_cache: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> BuildRequest:
    """Check a build's arguments as `docker build` takes them; InvalidSpec names the bad one.

    `dockerfile` is relative to the current directory (default: Dockerfile, else
    Containerfile, in the context) and must lie inside the context. A `--build-arg` without
    `=` takes its value from `environ`, as Docker does.
    """
    root = Path(context)
    if not root.is_dir():
        raise InvalidSpec("context", f"{context!r} is not a directory")
    root = root.resolve()
    try:
        reference = parse_reference(tag)
    except ValueError as exc:
        raise InvalidSpec("--tag", f"{tag!r} is not an image name: {exc}") from None
    if reference.pinned:
        raise InvalidSpec("--tag", f"{tag!r} has a digest; a built image is named by a tag")
    if any(name in BUILTIN_NAMES for name in (tag, reference.repository)):
        raise InvalidSpec("--tag", f"{tag!r} is a built-in image's name; choose another")
    return BuildRequest(
        context=root,
        dockerfile=_dockerfile(root, dockerfile),
        tag=tag,
        build_args=_build_args(build_args, environ),
        no_cache=no_cache,
    )


def _dockerfile(root: Path, dockerfile: str | None) -> str:
    if dockerfile is None:
        found = [root / name for name in DOCKERFILE_NAMES if (root / name).is_file()]
        if not found:
            raise InvalidSpec("--file", f"no Dockerfile or Containerfile in {str(root)!r}")
        path = found[0]
    else:
        path = Path(dockerfile)
        if not path.is_file():
            raise InvalidSpec("--file", f"{dockerfile!r} is not a file")
    resolved = path.resolve()  # a link in the context may lead out of it
    if not resolved.is_relative_to(root):
        raise InvalidSpec("--file", f"{str(path)!r} is outside the build context {str(root)!r}")
    return str(resolved.relative_to(root))


def _build_args(values: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in values:
        key, equals, value = item.partition("=")
        if not _BUILD_ARG.fullmatch(key):
            raise InvalidSpec("--build-arg", f"{item!r} is not KEY=VALUE")
        if not equals:
            if key not in environ:
                raise InvalidSpec(
                    "--build-arg", f"{key} has no value and is not in the environment"
                )
            value = environ[key]
        found[key] = value
    return found


def build(
    request: BuildRequest,
    builder: DockerBuilder,
    store: ImportsFromDocker,
    progress: Progress | None = None,
    output: Output | None = None,
) -> BuiltImage:
    """Build on the Docker engine, then copy the image into the store."""
    stream = builder.build_image(
        request.context,
        dockerfile=request.dockerfile,
        tag=request.tag,
        build_args=request.build_args,
        no_cache=request.no_cache,
    )
    image_id = follow_build(stream, f"building {request.tag}", progress, output)
    if progress is not None:
        progress(f"copying {request.tag} into the image store", 0, None)
    local = store.import_docker(request.tag, progress)
    return BuiltImage(reference=request.reference, image_id=image_id, local=local)


def follow_build(
    stream: Iterable[Mapping[str, Any]],
    phase: str,
    progress: Progress | None = None,
    output: Output | None = None,
) -> str:
    """Report a build stream (`Step n/m` as progress, its text as output lines); the built
    image's id. BuildFailed carries the engine's error."""
    image_id = ""
    for kind, text in _records(stream, progress):
        if kind == "id":
            image_id = text
            continue
        step = _STEP.match(text)
        if step and progress is not None:
            progress(phase, int(step.group(1)), int(step.group(2)))
        if output is not None:
            output(text)
    if not image_id:
        raise BuildFailed(f"{phase}: the engine ended the build without an image")
    return image_id


def _records(
    stream: Iterable[Mapping[str, Any]], progress: Progress | None
) -> Iterator[tuple[str, str]]:
    """("id", the image id) and ("text", a line the build printed); pull statuses go to
    `progress`."""
    pending = ""
    for record in stream:
        if "error" in record:
            detail = record.get("errorDetail")
            message = detail.get("message") if isinstance(detail, Mapping) else None
            raise BuildFailed(str(message or record["error"]).strip()[:_MAX_PENDING])
        aux = record.get("aux")
        if isinstance(aux, Mapping) and isinstance(aux.get("ID"), str):
            yield "id", aux["ID"]
        status = record.get("status")
        if isinstance(status, str) and progress is not None:
            detail = record.get("progressDetail")
            detail = detail if isinstance(detail, Mapping) else {}
            current, total = detail.get("current"), detail.get("total")
            progress(
                status,
                current if isinstance(current, int) else 0,
                total if isinstance(total, int) else None,
            )
        text = record.get("stream")
        if isinstance(text, str):
            pending += text
            *complete, pending = pending.split("\n")
            for line in complete:
                yield "text", line
            if len(pending) > _MAX_PENDING:
                yield "text", pending
                pending = ""
    if pending:
        yield "text", pending
