"""The `sandboxer` logger and a timer that logs engine calls at debug level."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

logger = logging.getLogger("sandboxer")


@contextlib.contextmanager
def timed(operation: str, **context: object) -> Iterator[None]:
    """Log `operation` and how long it took (also when it fails)."""
    if not logger.isEnabledFor(logging.DEBUG):
        yield
        return
    start = time.perf_counter()
    outcome = "failed"
    try:
        yield
        outcome = "ok"
    finally:
        details = " ".join(f"{k}={v}" for k, v in context.items())
        logger.debug(
            "%s %s %s in %.1f ms", operation, details, outcome, (time.perf_counter() - start) * 1e3
        )
