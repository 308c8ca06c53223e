"""Durations as the CLI takes them: "90", "90s", "15m", "1h", "2d"."""

from __future__ import annotations

import argparse
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds in "90", "90s", "15m", "1h" or "2d"."""
    found = _DURATION.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 15m, 1h or 2d, got {text!r}"
        )
    return float(found.group(1)) * _SECONDS[found.group(2)]
