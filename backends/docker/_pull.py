"""A registry pull through dockerd: its progress stream turned into bounded log lines and
progress calls, its failures into `ImagePullFailed` that says what to do."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sandboxer.backend import ImagePullFailed, logger
from sandboxer.images import ImageReference
from sandboxer.images.reference import printable
from sandboxer.images.store import Progress

from ._sdk import docker

PLATFORM = "linux/amd64"  # the only platform sandboxes run
_MAX_LOG_LINES = 200  # a pull of many layers logs its first lines, then says it stopped
_MAX_LAYERS = 4096  # layers tracked for the byte count; more are not counted
_MAX_TEXT = 1000  # characters kept of a registry's (untrusted) words

# (phrases in dockerd's message, lower case) -> what went wrong and the fix; first match wins.
_FAILURES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("no matching manifest", "specified platform"),
        "{reference} has no linux/amd64 image",
        "push an image built for linux/amd64 (the only platform sandboxes run)",
    ),
    (
        ("verification failed", "digest mismatch"),
        "the registry {registry} sent content that does not match its digest",
        "the copy on the registry is damaged or was replaced: push {reference} again",
    ),
    (
        ("pull access denied",),
        "{registry} has no repository {repository}, or it needs credentials",
        "check the name; if it is private, log in: docker login {registry} "
        "(credentials are read from $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    ),
    (
        ("unauthorized", "authentication required", "no basic auth credentials", "denied"),
        "the registry {registry} refused the credentials",
        "log in: docker login {registry} "
        "(credentials are read from $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    ),
    (
        ("manifest unknown", "name unknown", "not found", "does not exist"),
        "the registry {registry} has no {reference}",
        "check the repository and the tag or digest "
        "(the registry lists tags at /v2/{repository}/tags/list)",
    ),
    (
        (
            "connection refused",
            "no such host",
            "dial tcp",
            "i/o timeout",
            "network is unreachable",
            "no route to host",
            "timeout exceeded",
            "http response to https client",
            "tls:",
            "x509:",
        ),
        "the registry {registry} cannot be reached",
        "check that it runs and answers on the address the reference names "
        "(curl http://{registry}/v2/ for one on this host)",
    ),
)


def pull_failure(reference: ImageReference, message: str) -> ImagePullFailed:
    """The error for dockerd's `message` about pulling `reference`, with its fix."""
    text = _bounded(message)
    lowered = text.lower()
    words = {
        "reference": str(reference),
        "registry": reference.registry,
        "repository": reference.repository,
    }
    for phrases, what, fix in _FAILURES:
        if any(phrase in lowered for phrase in phrases):
            return ImagePullFailed(
                f"cannot pull {reference}: {what.format(**words)} ({text}); "
                f"fix: {fix.format(**words)}"
            )
    return ImagePullFailed(
        f"cannot pull {reference}: {text}; fix: check the reference and the registry "
        f"{reference.registry}, then: sandboxer images pull {reference}"
    )


def pull(api: Any, reference: ImageReference, progress: Progress | None) -> None:
    """Pull `reference` (linux/amd64 only) through dockerd; `ImagePullFailed` if it fails.

    The credentials are docker's own: `$DOCKER_CONFIG/config.json`, else
    `~/.docker/config.json`, read again for each pull so a `docker login` made after the
    client was built counts."""
    api.reload_config()
    tag = reference.digest or reference.tag
    report = _PullReport(str(reference), progress)
    try:
        events = api.pull(reference.name, tag=tag, stream=True, decode=True, platform=PLATFORM)
        error = report.follow(events)
    except docker.errors.APIError as exc:
        raise pull_failure(reference, str(exc.explanation or exc)) from exc
    if error is not None:
        raise pull_failure(reference, error)


class _PullReport:
    """Follows a pull's events: logs each layer's status changes at INFO (bounded), adds
    up the bytes downloaded for `progress`, and keeps the error a failed pull ends with."""

    def __init__(self, reference: str, progress: Progress | None) -> None:
        self._phase = f"pulling {reference}"
        self._progress = progress
        self._status: dict[str, str] = {}  # layer -> its last status
        self._bytes: dict[str, tuple[int, int | None]] = {}  # layer -> (done, total)
        self._lines = 0

    def follow(self, events: Iterable[Any]) -> str | None:
        """Consume `events`; the error message the pull failed with, or None."""
        for event in events:
            if not isinstance(event, Mapping):
                continue
            if "error" in event or "errorDetail" in event:
                detail = event.get("errorDetail")
                message = detail.get("message") if isinstance(detail, Mapping) else None
                return str(message or event.get("error") or "pull failed")
            self._event(event)
        return None

    def _event(self, event: Mapping[str, Any]) -> None:
        status = _bounded(str(event.get("status", "")))
        layer = _bounded(str(event.get("id", "")))
        known = layer in self._status or len(self._status) < _MAX_LAYERS
        if known and self._status.get(layer) != status:
            self._status[layer] = status
            self._log("%s: %s", self._phase, f"{layer} {status}" if layer else status)
        if status == "Downloading":
            self._count(layer, event.get("progressDetail"))
        elif status == "Download complete" and layer in self._bytes:
            _, total = self._bytes[layer]
            if total is not None:
                self._bytes[layer] = (total, total)
                self._report()

    def _count(self, layer: str, detail: Any) -> None:
        if not isinstance(detail, Mapping):
            return
        done, total = detail.get("current"), detail.get("total")
        if not isinstance(done, int) or (
            layer not in self._bytes and len(self._bytes) >= _MAX_LAYERS
        ):
            return
        self._bytes[layer] = (done, total if isinstance(total, int) and total > 0 else None)
        self._report()

    def _report(self) -> None:
        if self._progress is None:
            return
        done = sum(d for d, _ in self._bytes.values())
        totals = [t for _, t in self._bytes.values()]
        total = None if None in totals else sum(t for t in totals if t is not None)
        self._progress(self._phase, done, total)

    def _log(self, message: str, *args: str) -> None:
        self._lines += 1
        if self._lines <= _MAX_LOG_LINES:
            logger.info(message, *args)
        elif self._lines == _MAX_LOG_LINES + 1:
            logger.info("%s: further progress not logged", self._phase)


def _bounded(text: str) -> str:
    """The registry's words as logs and messages show them: bounded, no terminal escapes."""
    text = text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"
    return printable(text)
