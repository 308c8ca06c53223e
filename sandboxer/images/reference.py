"""Image references as Docker spells them, parsed once for every engine.

`alpine` means `docker.io/library/alpine:latest`; `127.0.0.1:5000/team/app:1` names a
registry by its host (a dot, a colon or `localhost` in the first component); a digest
(`@sha256:` and 64 hex digits) pins the content whatever the tag says.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?"
)
_MAX_LENGTH = 255


@attrs.frozen
class ImageReference:
    """A parsed reference: registry host, repository path, tag and/or digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """Registry and repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    @property
    def on_loopback(self) -> bool:
        """A registry on this host: plain HTTP is acceptable there, as Docker accepts it."""
        host = self.registry.rsplit(":", 1)[0] if ":" in self.registry else self.registry
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def printable(text: str) -> str:
    """Registry or image text made safe to show on a terminal inside a message: control and
    format characters (escape sequences, bidi overrides) are spelled as repr() spells them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parse_reference(text: str) -> ImageReference:
    """Parse `text` as Docker does; ValueError says what is wrong with it."""
    if not text or len(text) > _MAX_LENGTH:
        raise ValueError(f"an image reference has 1 to {_MAX_LENGTH} characters")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"digest {digest!r} is not sha256: followed by 64 hex digits")
    tag = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ValueError(f"tag {tag!r} is not a valid tag")
    parts = rest.split("/")
    registry = DEFAULT_REGISTRY
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.fullmatch(first):
            raise ValueError(f"registry {first!r} is not a host[:port]")
        registry = first
        parts = parts[1:]
    if not parts or not all(_COMPONENT.fullmatch(part) for part in parts):
        raise ValueError(
            f"repository {'/'.join(parts)!r} must be lower-case path components "
            "(letters, digits, and . _ - between them)"
        )
    if registry == DEFAULT_REGISTRY and len(parts) == 1:
        parts = ["library", *parts]
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageReference(registry=registry, repository="/".join(parts), tag=tag, digest=digest)
