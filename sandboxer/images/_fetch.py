"""Talking to registries through skopeo: a manifest by reference, an image into the store's
OCI layout. Every call has a deadline, its output is bounded, and its failures become
ImagePullFailed with the fix in the message.

Plain HTTP (no TLS verification) only for a registry on this host's loopback, as Docker
allows. Credentials come from the Docker client's config.json, as `docker login` writes it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .._errors import ImagePullFailed
from ._oci import MAX_DOCUMENT
from .reference import ImageReference, printable

_INSPECT_TIMEOUT = 120.0
_COPY_TIMEOUT = 3600.0
_STDERR_KEPT = 4096
_BLOB_LINE = re.compile(rb"^Copying blob ")
_LOG_MESSAGE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
SKOPEO_FIX = "apt-get install -y skopeo"

# What a pull reports: (units done, total or None) of copying; the store adds the phase.
CopyProgress = Callable[[int, int | None], None]


class Fetcher(Protocol):
    """What the store needs from registries and the Docker engine (skopeo; a fake in tests)."""

    def manifest(self, reference: ImageReference) -> bytes:
        """The raw manifest or index that `reference` names, at most MAX_DOCUMENT bytes."""

    def copy(
        self,
        reference: ImageReference,
        layout: Path,
        tag: str,
        layers: int,
        progress: CopyProgress | None,
    ) -> None:
        """Copy the linux/amd64 image `reference` (pinned by digest) into the OCI layout
        `layout` under the name `tag`; `layers` is how many layers it has."""

    def copy_from_docker(self, name: str, layout: Path, tag: str) -> None:
        """Copy the local Docker engine's image `name` into `layout` under the name `tag`."""


def authfile() -> Path | None:
    """The Docker client's credentials file, if there is one."""
    folder = os.environ.get("DOCKER_CONFIG")
    path = Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"
    return path if path.is_file() else None


class Skopeo:
    """The registry as skopeo reaches it."""

    def __init__(
        self, inspect_timeout: float = _INSPECT_TIMEOUT, copy_timeout: float = _COPY_TIMEOUT
    ) -> None:
        self.inspect_timeout = inspect_timeout
        self.copy_timeout = copy_timeout

    def _skopeo(self) -> str:
        path = shutil.which("skopeo")
        if path is None:
            raise ImagePullFailed(
                f"pulling images needs skopeo, which is not installed\n  fix: {SKOPEO_FIX}"
            )
        return path

    def manifest(self, reference: ImageReference) -> bytes:
        argv = [self._skopeo(), "inspect", "--raw"]
        if reference.on_loopback:
            argv.append("--tls-verify=false")
        credentials = authfile()
        if credentials is not None:
            argv.append(f"--authfile={credentials}")
        argv.append(f"docker://{reference}")
        return _run(
            argv,
            f"pulling {reference}",
            self.inspect_timeout,
            MAX_DOCUMENT,
            None,
            lambda stderr: pull_failed(reference, stderr),
        )

    def copy(
        self,
        reference: ImageReference,
        layout: Path,
        tag: str,
        layers: int,
        progress: CopyProgress | None,
    ) -> None:
        if ":" in str(layout):
            raise ImagePullFailed(f"the image store's path {layout} must not hold ':' (skopeo)")
        argv = [self._skopeo(), "--override-os", "linux", "--override-arch", "amd64", "copy"]
        if reference.on_loopback:
            argv.append("--src-tls-verify=false")
        credentials = authfile()
        if credentials is not None:
            argv.append(f"--src-authfile={credentials}")
        argv += [f"docker://{reference}", f"oci:{layout}:{tag}"]
        copied = 0

        def on_line(line: bytes) -> None:
            nonlocal copied
            if progress is not None and _BLOB_LINE.match(line):
                copied += 1
                progress(min(copied, layers), layers)

        _run(
            argv,
            f"pulling {reference}",
            self.copy_timeout,
            MAX_DOCUMENT,
            on_line,
            lambda stderr: pull_failed(reference, stderr),
        )
        if progress is not None and copied < layers:  # blobs it already had are not listed
            progress(layers, layers)

    def copy_from_docker(self, name: str, layout: Path, tag: str) -> None:
        argv = [self._skopeo(), "copy", f"docker-daemon:{name}", f"oci:{layout}:{tag}"]

        def failed(stderr: str) -> ImagePullFailed:
            return ImagePullFailed(
                f"cannot copy {name} from the Docker engine ({_message(stderr)})\n"
                f"  fix: check that dockerd runs and holds it: docker image inspect {name}"
            )

        _run(argv, f"copying {name}", self.copy_timeout, MAX_DOCUMENT, None, failed)


def _run(
    argv: list[str],
    doing: str,
    timeout: float,
    max_stdout: int,
    on_line: Callable[[bytes], None] | None,
    failed: Callable[[str], ImagePullFailed],
) -> bytes:
    """Run skopeo for `doing`; its stdout, of which more than `max_stdout` bytes is an error
    (lines go to `on_line` as they come). `failed` turns its stderr into the error."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

        timer = threading.Timer(timeout, expire)
        timer.start()
        kept = bytearray()
        try:
            assert process.stdout is not None
            while line := process.stdout.readline(64 * 1024):
                if on_line is not None:
                    on_line(line)
                kept += line
                if len(kept) > max_stdout:
                    raise ImagePullFailed(
                        f"{doing}: skopeo printed over {max_stdout} bytes "
                        "(a manifest over the bound?)"
                    )
            code = process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:
                process.kill()
            process.wait()
        if expired.is_set():
            raise ImagePullFailed(
                f"{doing}: skopeo did not finish within {timeout:.0f}s\n"
                "  fix: check that the registry (or dockerd) answers"
            )
        if code != 0:
            errors.seek(0, os.SEEK_END)
            errors.seek(max(0, errors.tell() - _STDERR_KEPT))
            raise failed(errors.read().decode(errors="replace"))
        return bytes(kept)


def pull_failed(reference: ImageReference, stderr: str) -> ImagePullFailed:
    """skopeo's complaint about `reference`, turned into what to do about it."""
    text = stderr.lower()
    host = reference.registry
    scheme = "http" if reference.on_loopback else "https"
    if (
        "connection refused" in text
        or "no such host" in text
        or "unreachable" in text
        or ("dial tcp" in text and "timeout" in text)
    ):
        reason = f"the registry {host} is unreachable"
        fix = f"is the registry running? check that it answers: curl {scheme}://{host}/v2/"
    elif "manifest unknown" in text or "name unknown" in text or "not found" in text:
        reason = "the registry has no such repository or tag"
        fix = f"check the name and tag ({scheme}://{host}/v2/{reference.repository}/tags/list)"
    elif "unauthorized" in text or "authentication required" in text or "denied" in text:
        reason = f"the registry {host} refused access"
        fix = f"log in first: docker login {host}"
    elif "digest" in text and any(word in text for word in ("not match", "mismatch")):
        reason = "the registry sent content that does not match its digest"
        fix = "the registry or the image is corrupt: push the image again"
    elif "http response to https client" in text:
        reason = f"the registry {host} speaks plain HTTP, accepted only on loopback"
        fix = f"serve {host} over TLS, or use a registry on 127.0.0.1"
    else:
        reason = "skopeo failed"
        fix = f"read skopeo's error in parentheses; try: skopeo inspect docker://{reference}"
    detail = _message(stderr)
    return ImagePullFailed(f"cannot pull {reference}: {reason} ({detail})\n  fix: {fix}")


def _message(stderr: str) -> str:
    """The gist of skopeo's last complaint: its log line's msg, without the noise; it
    quotes the registry, which may send terminal escapes."""
    lines = stderr.strip().splitlines() or [""]
    match = _LOG_MESSAGE.search(lines[-1])
    text = match.group(1).replace('\\"', '"') if match else lines[-1]
    return printable(text.removeprefix("Error parsing image name ")[-500:])
