"""`images pull|build` and the `images` command's parser (`_image_store` lists and removes).

The core store (`sandboxer.images.store`) holds pulled and built images for every engine
that starts from an unpacked tree (Incus, libvirt); engines with their own image store
(Docker) pull natively. Exit codes here: 0 success, 1 an image could not be found, pulled
or built, 2 bad usage, 125 an engine failed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from sandboxer import (
    CONTROLS,
    BackendUnavailable,
    ImageNotFound,
    InvalidSpec,
    PullPolicy,
    SandboxError,
    UnsupportedFeature,
    backend_names,
    get_backend,
    launch,
    probe_all,
)
from sandboxer.images import build as building
from sandboxer.images import debian, parse_reference
from sandboxer.images.store import Progress, default_store

from . import _image_store, _output, _progress
from ._image_store import NOT_FOUND


@runtime_checkable
class PullsImages(Protocol):
    """A backend with its own image store, which it fills from the registry itself."""

    def pull_image(self, image: str, policy: PullPolicy, progress: Progress | None) -> Any: ...


def register(commands: Any) -> None:
    images = commands.add_parser(
        "images",
        help="pull, build, list and remove images",
        description="Images for every engine: pulled from registries or built from a "
        "Dockerfile into sandboxer's image store, plus the built-in images.",
    )
    actions = images.add_subparsers(dest="action", metavar="ACTION", required=True)
    formatter = argparse.RawDescriptionHelpFormatter

    pull = actions.add_parser(
        "pull",
        help="fetch an image from its registry for the engines",
        description="Fetch REF into the image store (Incus, libvirt) and into each engine "
        "that pulls natively (Docker), for the chosen engines (default: every available "
        "one). Exit code 1 when the pull fails.",
    )
    pull.add_argument("reference", metavar="REF")
    pull.add_argument("--backend", action="append", metavar="B", help="only this engine")
    pull.set_defaults(handler=pull_command)

    build = actions.add_parser(
        "build",
        help="build the built-in images, or an image from a Dockerfile",
        formatter_class=formatter,
        usage="%(prog)s [--backend B] [IMAGE]\n"
        "       %(prog)s -t NAME [-f DOCKERFILE] [--build-arg K=V] [--no-cache] CONTEXT",
        description="Without -t: build IMAGE (default: every built-in image) on each engine\n"
        "(default: every available one) by launching one throwaway sandbox from it.\n\n"
        "With -t: build the Dockerfile in CONTEXT on the Docker engine, as `docker build`\n"
        "does, then copy the image into the image store so that every engine runs it as\n"
        "NAME. Exit code 1 when the build fails.",
    )
    build.add_argument("image", nargs="?", metavar="IMAGE|CONTEXT")
    build.add_argument(
        "--backend", action="append", metavar="B", help="only this engine (repeatable)"
    )
    build.add_argument("-t", "--tag", metavar="NAME", help="build CONTEXT and name it NAME")
    build.add_argument(
        "-f", "--file", metavar="DOCKERFILE", help="default: CONTEXT/Dockerfile or Containerfile"
    )
    build.add_argument(
        "--build-arg", action="append", default=[], metavar="K=V", help="(repeatable)"
    )
    build.add_argument("--no-cache", action="store_true", help="rebuild every step")
    build.set_defaults(handler=build_command)

    listing = actions.add_parser(
        "ls",
        help="built-in, stored and converted images",
        formatter_class=formatter,
        description="List the built-in images, the image store, and the engines' converted "
        "copies.\n\n" + _image_store.LS_JSON,
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_image_store.ls_command)

    inspect = actions.add_parser(
        "inspect",
        help="an image's digest, config and where it is cached",
        formatter_class=formatter,
        description="Show a stored image (never pulls).\n\n" + _image_store.INSPECT_JSON,
    )
    inspect.add_argument("reference", metavar="REF")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_image_store.inspect_command)

    remove = actions.add_parser(
        "rm",
        help="remove images from the store and the engines' converted copies",
        description="Remove each REF from the image store and its converted copies from "
        "the engines. Exit code 1 when one is not stored.",
    )
    remove.add_argument("references", nargs="+", metavar="REF")
    remove.set_defaults(handler=_image_store.rm_command)

    prune = actions.add_parser(
        "prune",
        help="evict least recently used images under a size bound",
        description="Evict the least recently used images until the store fits SIZE "
        "(default: the store's own bound), with their converted copies on the engines.",
    )
    bound = prune.add_mutually_exclusive_group()
    bound.add_argument("--max-size", metavar="SIZE", help="e.g. 20g, 512MiB")
    bound.add_argument("--all", action="store_true", help="empty the cache")
    prune.set_defaults(handler=_image_store.prune_command)


def _chosen_backends(wanted: Sequence[str] | None) -> tuple[list[str], bool]:
    """The available backends among `wanted` (default: all), and whether one was missing."""
    states = probe_all(wanted or backend_names())
    failed = False
    for name, state in states.items():
        if not state.available and wanted:
            _output.error(f"{name} is unavailable: {state.reason}")
            failed = True
    return [name for name, state in states.items() if state.available], failed


def pull_command(args: argparse.Namespace) -> int:
    _check_reference("REF", args.reference)
    chosen, failed = _chosen_backends(args.backend)
    if failed:
        return _output.ENGINE_FAILURE
    backends = {name: get_backend(name) for name in chosen}
    native = {name: b for name, b in backends.items() if isinstance(b, PullsImages)}
    from_store = [name for name in chosen if name not in native]
    done = []
    try:
        with _progress.display() as progress:
            if from_store or not native:
                image = default_store().resolve(args.reference, PullPolicy.ALWAYS, progress)
                users = f" (for {', '.join(from_store)})" if from_store else ""
                done.append(f"{image.reference} {image.digest} in the image store{users}")
            for name, backend in native.items():
                backend.pull_image(args.reference, PullPolicy.ALWAYS, progress)
                done.append(f"{args.reference} pulled into {name}")
    except ImageNotFound as exc:
        _output.error(str(exc))
        return NOT_FOUND
    print("\n".join(done))
    return 0


def _check_reference(argument: str, text: str) -> None:
    if text in building.BUILTIN_NAMES:
        raise InvalidSpec(argument, f"{text} is built in, not pulled: `images build {text}`")
    try:
        parse_reference(text)
    except ValueError as exc:
        raise InvalidSpec(argument, f"{text!r} is not an image reference: {exc}") from None


def build_command(args: argparse.Namespace) -> int:
    if args.tag is not None:
        return _build_dockerfile(args)
    for flag, given in (("--file", args.file), ("--build-arg", args.build_arg)):
        if given:
            raise InvalidSpec(flag, "applies to a Dockerfile build: add -t NAME and CONTEXT")
    if args.no_cache:
        raise InvalidSpec("--no-cache", "applies to a Dockerfile build: add -t NAME and CONTEXT")
    return _build_builtin(args)


def _build_dockerfile(args: argparse.Namespace) -> int:
    if args.backend:
        raise InvalidSpec("--backend", "a -t build runs on docker and then serves every engine")
    if args.image is None:
        raise InvalidSpec("context", "name the build context directory (e.g. `.`)")
    request = building.build_request(
        args.image, args.tag, args.file, args.build_arg, no_cache=args.no_cache
    )
    state = probe_all(["docker"])["docker"]
    if not state.available:
        raise BackendUnavailable("docker", state.reason, state.fix)
    docker = get_backend("docker")
    if not isinstance(docker, building.DockerBuilder):
        _output.error("the docker backend here cannot build images (it has no build_image)")
        return _output.ENGINE_FAILURE
    started = time.monotonic()
    try:
        with _progress.display() as progress:
            built = building.build(request, docker, default_store(), progress, progress.line)
    except (building.BuildFailed, ImageNotFound) as exc:
        _output.error(str(exc))
        return NOT_FOUND
    print(
        f"{built.reference} {built.local.digest} built ({time.monotonic() - started:.1f}s): "
        "on docker and in the image store"
    )
    return 0


def _build_builtin(args: argparse.Namespace) -> int:
    chosen, failed = _chosen_backends(args.backend)
    images = [args.image] if args.image else list(building.BUILTIN_NAMES)
    if chosen:
        stored = [image for image in images if image in debian.BUILTIN_OCI_IMAGES]
        ready = _build_in_store(stored)
        failed = failed or len(ready) < len(stored)
        images = [image for image in images if image in ready or image not in stored]
    for backend in chosen:
        for image in images:
            started = time.monotonic()
            try:
                # A backend builds a missing image when a sandbox first needs it.
                with (
                    _output.progress(f"building {image} on {backend}"),
                    launch(
                        image=image,
                        backend=backend,
                        profile="default",
                        network="none",
                        allow_unenforced=CONTROLS,
                    ),
                ):
                    pass
            except UnsupportedFeature as exc:
                if args.image:
                    _output.error(f"{image} on {backend}: {exc}")
                    failed = True
                else:  # not every built-in image is for every engine (systemd is not for docker)
                    _output.note(f"{image} skipped on {backend}: {exc}")
                continue
            except SandboxError as exc:
                _output.error(f"{image} on {backend}: {exc}")
                failed = True
                continue
            print(f"{image} ready on {backend} ({time.monotonic() - started:.1f}s)")
    return _output.ENGINE_FAILURE if failed else 0


def _build_in_store(images: Sequence[str]) -> list[str]:
    """Build the store's built-in images first, with progress (the engines then start from
    them); the ones that are ready."""
    ready = []
    for image in images:
        started = time.monotonic()
        try:
            with _progress.display() as progress:
                default_store().resolve(image, PullPolicy.MISSING, progress)
        except SandboxError as exc:
            _output.error(f"{image}: {exc}")
            continue
        print(f"{image} ready in the image store ({time.monotonic() - started:.1f}s)")
        ready.append(image)
    return ready
