"""Checks of what a caller passes to exec and the file calls, before any engine call.

Each raises InvalidSpec naming the argument. They follow SandboxSpec's own rules, so a
value accepted at launch is accepted at exec and the other way round.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Mapping, Sequence

from ._errors import InvalidSpec
from ._models import _ENV_KEY, _FORBIDDEN_GUEST_DIRS, USER_PATTERN, _guest_path, _is_under


def command(value: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        argv: tuple[object, ...] = ("/bin/sh", "-c", value)
    else:
        try:
            argv = tuple(value)
        except TypeError:
            raise InvalidSpec("command", f"expected a list of strings, got {value!r}") from None
    if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise InvalidSpec("command", "expected a non-empty list of strings without NUL bytes")
    return argv  # type: ignore[return-value]  # every item checked to be a str


def environment(value: Mapping[str, str] | None) -> Mapping[str, str]:
    """Names as a shell would take them; values any text without NUL (newlines included)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec("env", f"expected a dict of strings, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise InvalidSpec(f"env[{key!r}]", "not a valid environment variable name")
        if not isinstance(item, str) or "\0" in item:
            raise InvalidSpec(f"env[{key!r}]", f"expected a string without NUL, got {item!r}")
    return dict(value)


def workdir(value: object) -> str:
    path = _guest_path("workdir", value)
    if any(_is_under(path, d) for d in _FORBIDDEN_GUEST_DIRS):
        raise InvalidSpec("workdir", f"cannot be under /proc or /sys: {path}")
    return path


def user(value: object) -> str:
    if not isinstance(value, str) or not USER_PATTERN.fullmatch(value):
        raise InvalidSpec("user", f"expected 'name', 'uid' or 'uid:gid', got {value!r}")
    return value


def timeout(value: object, field: str = "timeout") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpec(field, f"expected a number of seconds, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise InvalidSpec(field, f"must be positive and finite, got {value!r}")
    return float(value)


def stdin(value: object) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise InvalidSpec("stdin", f"expected bytes or str, got {type(value).__name__}")


def sandbox_path(field: str, path: object) -> str:
    """An absolute path inside the sandbox, normalised, other than '/'."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise InvalidSpec(field, f"expected an absolute path inside the sandbox, got {path!r}")
    normal = "/" + posixpath.normpath(path).lstrip("/")
    if normal == "/":
        raise InvalidSpec(field, "cannot be the sandbox's root '/'")
    return normal
