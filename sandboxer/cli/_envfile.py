"""`--env-file FILE` in Docker's format.

One `KEY=VALUE` per line, the value taken verbatim (no quotes removed, nothing expanded);
blank lines and lines starting with `#` are skipped; a bare `KEY` takes our environment's
value, and is left out when we have none.
"""

from __future__ import annotations

import os

from sandboxer import InvalidSpec

FLAG = "--env-file"
MAX_BYTES = 1024 * 1024  # an environment far larger than any engine accepts


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InvalidSpec(FLAG, f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise InvalidSpec(FLAG, f"{path} is larger than {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSpec(FLAG, f"{path} is not UTF-8 text") from None


def parse(text: str, path: str) -> dict[str, str]:
    """The variables `text` (the file at `path`) sets, in order."""
    result: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, has_value, value = line.partition("=")
        if not key:
            raise InvalidSpec(FLAG, f"{path} line {number}: no variable name before '='")
        if any(character.isspace() for character in key):
            raise InvalidSpec(FLAG, f"{path} line {number}: {key!r} contains whitespace")
        if has_value:
            result[key] = value
        elif key in os.environ:
            result[key] = os.environ[key]
    return result


def load(paths: list[str]) -> dict[str, str]:
    """The variables of every file, a later file's winning."""
    result: dict[str, str] = {}
    for path in paths:
        result.update(parse(_read(path), path))
    return result
