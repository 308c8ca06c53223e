"""The images the integration tests pull, built by the Docker engine and pushed to the local
registry once: each carries a label with the hash of what it was built from, so a second
run finds it in the registry and builds nothing.

- `app`: FROM sandboxer/debian, several layers with a whiteout and an opaque directory,
  Env, WorkingDir, a named User, an Entrypoint script that leaves a marker and
  `exec "$@"`, Cmd `sleep infinity`, and a setuid-root copy of `id`.
- `variant`: the same base with one more file (a tag moved to it changes the digest).
- `multiarch`: an index of app's linux/amd64 manifest and a fake linux/arm64 one (first).
- `hostile:<attack>`: the base plus a layer that tries to write outside the tree.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import attrs

from .registry import (
    DOCKER_MANIFEST,
    Manifest,
    Registry,
    digest_of,
    image_index,
    image_manifest,
)

HASH_LABEL = "org.sandboxer.test.context"
LOCK = Path(tempfile.gettempdir()) / "sandboxer-test-images.lock"
BASE_IMAGE = "sandboxer/debian"
APP_USER, APP_UID = "appuser", 4321
APP_ENV = {"APP_MODE": "test", "APP_NOTE": "two words"}
APP_WORKDIR = "/srv/app"
MARKER = "/tmp/entrypoint-ran"
SETUID_ID = "/usr/local/bin/suid-id"
ARM_MARKER = "/ARM64-ONLY"
# Where the hostile layer aims on the host; the tests create and inspect these.
HOSTILE_TARGET = Path("/tmp/sandboxer-hostile-target")
HOSTILE_ESCAPES = (Path("/tmp/sandboxer-hostile-escape"), Path("/tmp/sandboxer-hostile-abs"))
HOSTILE_VICTIM = HOSTILE_TARGET / "victim"

ENTRYPOINT = f"""#!/bin/sh
# Leaves what the entrypoint saw, then becomes the command (Docker's habit).
echo "args=$* uid=$(id -u) pwd=$(pwd) mode=$APP_MODE" > {MARKER}
exec "$@"
"""

APP_DOCKERFILE = f"""FROM {{base}}
RUN mkdir -p /opt/layers/opaque && echo gone > /opt/layers/gone.txt \\
 && echo old > /opt/layers/opaque/old.txt && echo kept > /opt/layers/kept.txt
RUN rm /opt/layers/gone.txt && rm -rf /opt/layers/opaque && mkdir /opt/layers/opaque \\
 && echo new > /opt/layers/opaque/new.txt
RUN echo '{APP_USER}:x:{APP_UID}:{APP_UID}::/home/{APP_USER}:/bin/sh' >> /etc/passwd \\
 && echo '{APP_USER}:x:{APP_UID}:' >> /etc/group \\
 && mkdir -p /home/{APP_USER} {APP_WORKDIR} && chown {APP_UID}:{APP_UID} /home/{APP_USER} \\
 && cp /usr/bin/id {SETUID_ID} && chmod 4755 {SETUID_ID}
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
RUN chmod 0755 /usr/local/bin/entrypoint.sh
ENV APP_MODE={APP_ENV["APP_MODE"]} APP_NOTE="{APP_ENV["APP_NOTE"]}"
WORKDIR {APP_WORKDIR}
USER {APP_USER}
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["sleep", "infinity"]
"""

VARIANT_DOCKERFILE = """FROM {base}
RUN echo variant > /etc/sandboxer-variant
"""


@attrs.frozen
class PushedImages:
    """References (by digest) of what the set-up pushed, and the failing cases."""

    base: str  # sandboxer/debian's digest, as the store resolved it
    app: str  # 127.0.0.1:5000/sandboxer-test/app@sha256:...
    app_tag: str  # the same by tag
    variant: str
    multiarch: str  # by tag; resolves to app's amd64 manifest
    arm64_digest: str  # the fake arm64 manifest's digest, which must never be chosen
    hostile: str  # the repository: one tag per attack (HOSTILE_ATTACKS)
    moving_repository: str  # where a test moves a tag between app and variant

    @property
    def app_digest(self) -> str:
        return self.app.rpartition("@")[2]

    @property
    def variant_digest(self) -> str:
        return self.variant.rpartition("@")[2]


def _docker(*argv: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(
        ["docker", *argv],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=900,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(argv)}: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def _has_docker_image(name: str) -> bool:
    probe = subprocess.run(["docker", "image", "inspect", name], capture_output=True, check=False)
    return probe.returncode == 0


def base_in_docker() -> tuple[str, str]:
    """sandboxer/debian from sandboxer's store, loaded into Docker once: (docker name, digest)."""
    from sandboxer.images.store import default_store

    local = default_store().resolve(BASE_IMAGE, "missing")
    name = f"sandboxer-test/base:{local.digest.removeprefix('sha256:')[:16]}"
    if not _has_docker_image(name):
        subprocess.run(
            ["skopeo", "copy", f"oci:{local.layout}:{local.layout_tag}", f"docker-daemon:{name}"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    return name, local.digest


def _context_hash(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\0".encode())
    return digest.hexdigest()


def build_and_push(registry: Registry, repository: str, tag: str, files: dict[str, str]) -> str:
    """Build `files` (a Dockerfile and its context) and push it as repository:tag, unless
    the registry already holds that tag built from the same files; returns its digest."""
    wanted = _context_hash(files)
    found = registry.manifest(repository, tag)
    if found is not None:
        labels = registry.config(repository, found).get("config", {}).get("Labels") or {}
        if labels.get(HASH_LABEL) == wanted:
            return found.digest
    name = f"{registry.host}/{repository}:{tag}"
    with tempfile.TemporaryDirectory(prefix="sandboxer-test-build-") as context:
        for path, text in files.items():
            (Path(context) / path).write_text(text)
        _docker(
            "build", "--network", "none", "--label", f"{HASH_LABEL}={wanted}", "-t", name, context
        )
    _docker("push", name)
    pushed = registry.manifest(repository, tag)
    assert pushed is not None, f"{name} is not in the registry after the push"
    return pushed.digest


def retag(registry: Registry, source: str, repository: str, tag: str) -> str:
    """Push an image already in Docker under another repository:tag (its blobs go along)."""
    name = f"{registry.host}/{repository}:{tag}"
    _docker("tag", source, name)
    _docker("push", name)
    pushed = registry.manifest(repository, tag)
    assert pushed is not None
    return pushed.digest


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _entry(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, 0o644, 1_700_000_000
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def arm64_manifest(registry: Registry, repository: str) -> Manifest:
    """A linux/arm64 image that is nothing but a marker file: it must never be picked."""
    layer = _tar([_entry(ARM_MARKER.lstrip("/"), data=b"arm64\n")])
    config = json.dumps(
        {
            "architecture": "arm64",
            "os": "linux",
            "config": {"Cmd": ["/bin/false"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]},
        },
        sort_keys=True,
    ).encode()
    registry.put_blob(repository, layer)
    registry.put_blob(repository, config)
    body = image_manifest(config, [layer])
    registry.put_manifest(repository, digest_of(body), body, json.loads(body)["mediaType"])
    return Manifest(body, json.loads(body)["mediaType"], digest_of(body))


def push_multiarch(registry: Registry, repository: str, amd64_tag: str, tag: str) -> str:
    """An index under `tag`: the fake arm64 image first, then `amd64_tag`'s manifest."""
    amd64 = registry.manifest(repository, amd64_tag)
    assert amd64 is not None
    arm64 = arm64_manifest(registry, repository)
    body = image_index([(arm64, "linux", "arm64"), (amd64, "linux", "amd64")])
    return registry.put_manifest(repository, tag, body, json.loads(body)["mediaType"])


def hostile_layers() -> dict[str, bytes]:
    """Layers that write outside their tree if an unpacker lets them, one attack each (an
    unpacker that refuses the first entry would hide the others): a `..` path, an absolute
    path, writes through an absolute and a relative symlink, a file written over a hard
    link that points out."""
    target = str(HOSTILE_TARGET).lstrip("/")
    up = "../" * 24
    attacks = {
        "dotdot": [_entry(f"{up}{str(HOSTILE_ESCAPES[0]).lstrip('/')}", data=b"escaped\n")],
        "absolute": [_entry(str(HOSTILE_ESCAPES[1]), data=b"absolute\n")],
        "symlink-absolute": [
            _entry("abs-link", tarfile.SYMTYPE, link=f"/{target}"),
            _entry("abs-link/through-abs-link", data=b"through\n"),
        ],
        "symlink-relative": [
            _entry("rel-link", tarfile.SYMTYPE, link=f"{up}{target}"),
            _entry("rel-link/through-rel-link", data=b"through\n"),
        ],
        "hardlink": [
            _entry("hard-link", tarfile.LNKTYPE, link=f"{up}{str(HOSTILE_VICTIM).lstrip('/')}"),
            _entry("hard-link", data=b"overwritten\n"),
        ],
        "hardlink-absolute": [
            _entry("hard-link", tarfile.LNKTYPE, link=str(HOSTILE_VICTIM)),
            _entry("hard-link", data=b"overwritten\n"),
        ],
    }
    marker = _entry("etc/sandboxer-hostile-layer", data=b"applied\n")
    return {name: _tar([*entries, marker]) for name, entries in attacks.items()}


HOSTILE_ATTACKS = tuple(hostile_layers())


def push_hostile(registry: Registry, repository: str, base_tag: str, tag: str, layer: bytes) -> str:
    """The base image with a hostile layer on top (gzip, as Docker's own layers)."""
    base = registry.manifest(repository, base_tag)
    assert base is not None and base.media_type == DOCKER_MANIFEST, base
    config = registry.config(repository, base)
    compressed = gzip.compress(layer, mtime=0)
    config["rootfs"]["diff_ids"].append(digest_of(layer))
    config.setdefault("history", []).append({"created_by": "sandboxer test: hostile layer"})
    config_blob = json.dumps(config, sort_keys=True).encode()
    registry.put_blob(repository, compressed)
    registry.put_blob(repository, config_blob)
    document = base.document()
    document["config"] = {
        "mediaType": document["config"]["mediaType"],
        "digest": digest_of(config_blob),
        "size": len(config_blob),
    }
    document["layers"].append(
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "digest": digest_of(compressed),
            "size": len(compressed),
        }
    )
    body = json.dumps(document, indent=3).encode()
    return registry.put_manifest(repository, tag, body, DOCKER_MANIFEST)


def prepare(registry: Registry) -> PushedImages:
    """Everything the tests pull, in the registry (built and pushed only when missing);
    one test process at a time (pytest-xdist workers each ask)."""
    assert registry.up(), (
        f"no registry answers on {registry.host}: run scripts/setup-engines.sh (it starts "
        "Debian's docker-registry on 127.0.0.1:5000)"
    )
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _prepare(registry)


def _prepare(registry: Registry) -> PushedImages:
    base_name, base_digest = base_in_docker()
    app_files = {"Dockerfile": APP_DOCKERFILE.format(base=base_name), "entrypoint.sh": ENTRYPOINT}
    app = build_and_push(registry, "sandboxer-test/app", "1", app_files)
    variant_files = {"Dockerfile": VARIANT_DOCKERFILE.format(base=base_name)}
    variant = build_and_push(registry, "sandboxer-test/variant", "1", variant_files)
    # The moving tag's repository holds both images' blobs; a test points its tag at either.
    moving = "sandboxer-test/moving"
    for source, tag in (
        (f"{registry.host}/sandboxer-test/app:1", "a"),
        (f"{registry.host}/sandboxer-test/variant:1", "b"),
    ):
        found = registry.manifest(moving, tag)
        if found is None or found.digest != (app if tag == "a" else variant):
            retag(registry, source, moving, tag)
    multiarch = push_multiarch(registry, "sandboxer-test/app", "1", "multiarch")
    arm64 = registry.manifest("sandboxer-test/app", multiarch)
    assert arm64 is not None
    arm64_digest = arm64.document()["manifests"][0]["digest"]
    hostile_repository = "sandboxer-test/hostile"
    if registry.manifest(hostile_repository, "base") is None:
        retag(registry, base_name, hostile_repository, "base")
    for attack, layer in hostile_layers().items():
        push_hostile(registry, hostile_repository, "base", attack, layer)
    prefix = f"{registry.host}/"
    return PushedImages(
        base=base_digest,
        app=f"{prefix}sandboxer-test/app@{app}",
        app_tag=f"{prefix}sandboxer-test/app:1",
        variant=f"{prefix}sandboxer-test/variant@{variant}",
        multiarch=f"{prefix}sandboxer-test/app:multiarch",
        arm64_digest=arm64_digest,
        hostile=f"{prefix}{hostile_repository}",
        moving_repository=moving,
    )
