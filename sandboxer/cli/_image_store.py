"""`images ls|inspect|rm|prune`: the image store, the built-in images, and the copies the
engines converted from stored images."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from sandboxer import (
    ImageNotFound,
    InvalidSpec,
    PullPolicy,
    Resources,
    backend_names,
    get_backend,
    probe_all,
)
from sandboxer.images import BUILTIN_IMAGES, IMAGE_VERSION, debian, parse_reference
from sandboxer.images.build import BUILTIN_NAMES
from sandboxer.images.store import StoredImage, default_store

from . import _output, _progress

NOT_FOUND = 1  # as `docker pull` and `docker build` exit when they fail

LS_JSON = """\
--json prints a list; each entry has "kind" and "name":
  {"kind": "builtin", "name", "version", "from"}
  {"kind": "stored", "name" (its first reference), "references", "digest", "size"
   (bytes), "last_used" (Unix time or null), "derived": ["<artifact>", ...]}
  {"kind": "converted", "name" (the stored image's reference, else its digest),
   "backend", "digest"}: an engine's converted copy of a stored image"""

INSPECT_JSON = """\
--json prints {"reference", "references", "digest", "size" (bytes),
  "config": {"Entrypoint", "Cmd", "Env", "WorkingDir", "User"},
  "cached": {"rootfs", "layout", "layout_tag", "derived": ["<artifact>", ...],
             "engines": ["<backend with a converted copy>", ...]}}"""


@runtime_checkable
class ConvertsImages(Protocol):
    """A backend that keeps converted copies of stored images, by digest."""

    def converted(self) -> Iterable[str]: ...  # the digests it holds a copy of

    def remove_converted(self, digest: str) -> Any: ...


def _builtin_rows() -> list[dict[str, str]]:
    rows = [
        {"kind": "builtin", "name": name, "version": IMAGE_VERSION, "from": "busybox-static"}
        for name in BUILTIN_IMAGES
    ]
    rows += [
        {
            "kind": "builtin",
            "name": name,
            "version": debian.recipe_key(name)[:12],
            "from": "Debian 12, mmdebstrap",
        }
        for name in debian.BUILTIN_OCI_IMAGES
    ]
    return rows


def image_names() -> list[str]:
    """The built-in images and every reference in the store (for shell completion)."""
    stored = [
        reference.split("@recipe:")[0]
        for image in default_store().list()
        for reference in image.references
    ]
    return list(dict.fromkeys([*BUILTIN_NAMES, *stored]))


def _name(image: StoredImage) -> str:
    """What to call a stored image: its first reference (a built-in image's name without
    its recipe key), else its digest."""
    return image.references[0].split("@recipe:")[0] if image.references else image.digest


def _recipe(name: str) -> str:
    """The store's reference for the current build of a built-in Debian image."""
    return f"{name}@recipe:{debian.recipe_key(name)}"


def _stored_row(image: StoredImage) -> dict[str, Any]:
    return {
        "kind": "stored",
        "name": _name(image),
        "references": list(image.references),
        "digest": image.digest,
        "size": image.size,
        "last_used": image.last_used or None,
        "derived": list(image.derived),
    }


def _converted_rows(
    backends: dict[str, ConvertsImages], stored: Sequence[StoredImage]
) -> list[dict[str, Any]]:
    names = {image.digest: _name(image) for image in stored}
    return [
        {
            "kind": "converted",
            "name": names.get(digest, digest),
            "backend": name,
            "digest": digest,
        }
        for name, backend in backends.items()
        for digest in backend.converted()
    ]


def _converters() -> dict[str, ConvertsImages]:
    """The available backends that keep converted copies of stored images."""
    states = probe_all(backend_names())
    found = {name: get_backend(name) for name, state in states.items() if state.available}
    return {name: b for name, b in found.items() if isinstance(b, ConvertsImages)}


def ls_command(args: argparse.Namespace) -> int:
    builtin = _builtin_rows()
    images = default_store().list()
    stored = [_stored_row(image) for image in images]
    converted = _converted_rows(_converters(), images)
    if args.json:
        _output.print_json([*builtin, *stored, *converted])
        return 0
    now = time.time()
    tables = [
        _output.table(
            ("BUILT-IN", "VERSION", "FROM"),
            [[row["name"], row["version"], row["from"]] for row in builtin],
        )
    ]
    if stored:
        rows = [
            [
                row["name"],
                _short(row["digest"]),
                _progress.size(row["size"]),
                _output.age(None if row["last_used"] is None else now - row["last_used"]),
                ", ".join(row["derived"]) or "-",
            ]
            for row in stored
        ]
        headers = ("STORED", "DIGEST", "SIZE", "LAST USED", "DERIVED")
        tables.append(_output.table(headers, rows))
    if converted:
        rows = [
            [
                "(not in the store)" if row["name"] == row["digest"] else row["name"],
                row["backend"],
                _short(row["digest"]),
            ]
            for row in converted
        ]
        tables.append(_output.table(("CONVERTED", "BACKEND", "DIGEST"), rows))
    print("\n\n".join(tables))
    return 0


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def _find(stored: Sequence[StoredImage], text: str) -> list[StoredImage]:
    """The stored images `text` names: a digest, a reference (as written or canonical), or
    a built-in image's name (every build of it, the current recipe's first)."""
    if text in debian.BUILTIN_OCI_IMAGES:
        builds = [image for image in stored if _name(image) == text]
        return sorted(builds, key=lambda image: _recipe(text) not in image.references)
    names = {text}
    with contextlib.suppress(ValueError):
        names.add(str(parse_reference(text)))
    return [
        image
        for image in stored
        if text == image.digest or any(ref in names for ref in image.references)
    ][:1]


def inspect_command(args: argparse.Namespace) -> int:
    store = default_store()
    matches = _find(store.list(), args.reference)
    if not matches:
        verb = "build" if args.reference in BUILTIN_NAMES else "pull"
        _output.error(
            f"{args.reference} is not in the image store; "
            f"fix: sandboxer images {verb} {args.reference}"
        )
        return NOT_FOUND
    found = matches[0]
    name = _name(found)
    if name in debian.BUILTIN_OCI_IMAGES and _recipe(name) not in found.references:
        # Resolving the name would build the current recipe: no inspect should do that.
        _output.error(
            f"{args.reference} is a build of an older {name} recipe, which only `images rm` "
            f"and `images prune` act on; fix: sandboxer images build {name}"
        )
        return NOT_FOUND
    try:
        image = store.resolve(name, PullPolicy.NEVER)  # stored: nothing is fetched or built
    except ImageNotFound as exc:  # removed since the listing
        _output.error(str(exc))
        return NOT_FOUND
    engines = [
        backend
        for backend, converter in _converters().items()
        if found.digest in converter.converted()
    ]
    data = {
        "reference": image.reference,
        "references": list(found.references),
        "digest": image.digest,
        "size": found.size,
        "config": image.config.to_json(),
        "cached": {
            "rootfs": str(image.rootfs),
            "layout": str(image.layout),
            "layout_tag": image.layout_tag,
            "derived": list(found.derived),
            "engines": engines,
        },
    }
    if args.json:
        _output.print_json(data)
        return 0
    config = image.config
    rows = [
        ["reference", image.reference],
        ["digest", image.digest],
        ["size", _progress.size(found.size)],
        ["entrypoint", shlex.join(config.entrypoint) or "-"],
        ["cmd", shlex.join(config.cmd) or "-"],
        ["env", " ".join(f"{key}={value}" for key, value in config.env) or "-"],
        ["workdir", config.workdir or "-"],
        ["user", config.user or "-"],
        ["rootfs", str(image.rootfs)],
        ["layout", f"oci:{image.layout}:{image.layout_tag}"],
        ["derived", ", ".join(found.derived) or "-"],
    ]
    rows.append(["converted on", ", ".join(engines) or "-"])
    # The config is the image's word: no escape sequence of it reaches the terminal.
    print(_output.table(("FIELD", "VALUE"), [[key, _progress.clean(value)] for key, value in rows]))
    return 0


def rm_command(args: argparse.Namespace) -> int:
    store = default_store()
    stored = store.list()
    converters = _converters()
    code = 0
    for text in args.references:
        found = _find(stored, text)
        digests = {image.digest for image in found} or ({text} if _is_digest(text) else set())
        removed = []
        if [image for image in found if store.remove(image.digest)]:
            removed.append("the image store")
        removed += _remove_converted(converters, digests)
        if removed:
            print(f"{text}: removed from {', '.join(removed)}")
        else:
            _output.error(f"{text} is not in the image store nor converted on any engine")
            code = NOT_FOUND
    return code


def prune_command(args: argparse.Namespace) -> int:
    bound = None
    if args.max_size is not None:
        bound = _parse_size("--max-size", args.max_size)
    if args.all:
        bound = 0
    store = default_store()
    converters = _converters()
    evicted = store.prune(bound)
    # Only copies of what this store evicted: the engines may hold copies for other stores.
    engines = _remove_converted(converters, {image.digest for image in evicted})
    for image in evicted:
        print(f"evicted {_name(image)} ({_progress.size(image.size)})")
    freed = sum(image.size for image in evicted)
    print(
        f"{len(evicted)} image(s) evicted, {_progress.size(freed)} freed"
        + (f"; converted copies removed from {', '.join(engines)}" if engines else "")
    )
    return 0


def _remove_converted(converters: dict[str, ConvertsImages], digests: set[str]) -> list[str]:
    """Remove the engines' converted copies of `digests`; the engines that held one."""
    engines = []
    for name, converter in converters.items():
        held = set(converter.converted()) & digests
        for digest in sorted(held):
            converter.remove_converted(digest)
        if held:
            engines.append(name)
    return engines


def _is_digest(text: str) -> bool:
    return text.startswith("sha256:") and len(text) == 71


def _parse_size(argument: str, text: str) -> int:
    # The public size parser: sizes read as memory limits do (512m, 20g, 1GiB).
    try:
        size = Resources(memory=text).memory
    except InvalidSpec as exc:
        raise InvalidSpec(argument, exc.message) from None
    assert size is not None
    return size
