"""Timing and statistics shared by every measurement: interleaved runs, summaries, ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs


@attrs.frozen
class Summary:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def to_dict(self) -> dict[str, float]:
        return attrs.asdict(self)

    def in_ms(self, unit: str) -> Summary:
        """This summary, given in `unit`, converted to milliseconds."""
        k = 1e3 if unit == "s" else 1.0
        return Summary(self.median * k, self.min * k, self.max * k, self.n)


@attrs.frozen
class Result:
    """One measurement on one backend: sandboxer against the same work done by hand."""

    backend: str
    metric: str
    unit: str  # "ms" or "s": both sides in the same unit, lower is better
    sandboxer: Summary
    raw: Summary | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.raw is None else self.sandboxer.median / self.raw.median

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "metric": self.metric,
            "unit": self.unit,
            "sandboxer": self.sandboxer.to_dict(),
            "raw": None if self.raw is None else self.raw.to_dict(),
            "ratio": self.ratio,
            "note": self.note,
        }


def timed(function: Callable[[], object]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def interleave(
    repetitions: int, sides: Mapping[str, Callable[[], float]]
) -> dict[str, list[float]]:
    """Run each side once per round, in turn (A, B, B, A, A, B ...), so that a slow spell
    of the machine hits both alike; the order flips every round, so that neither side
    always goes first after the previous measurement's clean-up. Each side returns the
    seconds it measured itself."""
    samples: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for _ in range(repetitions):
        for name in order:
            samples[name].append(sides[name]())
        order.reverse()
    return samples


def result(
    backend: str,
    metric: str,
    samples: Mapping[str, list[float]],
    *,
    unit: str = "ms",
    note: str = "",
) -> Result:
    scale = 1e3 if unit == "ms" else 1.0
    scaled = {name: [v * scale for v in values] for name, values in samples.items()}
    raw = Summary.of(scaled["raw"]) if "raw" in scaled else None
    return Result(backend, metric, unit, Summary.of(scaled["sandboxer"]), raw, note)


def table(results: list[Result]) -> str:
    """The results as a markdown table."""
    lines = [
        "| backend | measurement | sandboxer median (min-max) | raw SDK median (min-max) "
        "| ratio | n |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        raw = _cell(r.raw, r.unit) if r.raw else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        metric = r.metric + (f" ({r.note})" if r.note else "")
        lines.append(
            f"| {r.backend} | {metric} | {_cell(r.sandboxer, r.unit)} | {raw} | {ratio} "
            f"| {r.sandboxer.n} |"
        )
    return "\n".join(lines)


def _cell(summary: Summary, unit: str) -> str:
    digits = 1 if unit == "ms" else 2
    return f"{summary.median:.{digits}f} {unit} ({summary.min:.{digits}f}-{summary.max:.{digits}f})"
