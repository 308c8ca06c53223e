"""Parsing of human sizes such as "256MiB", "512m" or "1g" into bytes."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str) -> int:
    """Bytes in `value`; docker-style single letters are binary (256m = 256 MiB).

    Raises ValueError with a readable message on anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '256MiB', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"must be positive, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as '256MiB', got {value!r}")
    match = _SIZE.match(value)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"expected a size such as '256MiB' or '512m', got {value!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return size
