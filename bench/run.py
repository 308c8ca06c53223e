"""sandboxer against the raw engine SDKs, measured in one run, interleaved.

    python bench/run.py [--backend docker,incus,libvirt] [--quick] [--images] [--json PATH]

For each available backend: launch+exec+destroy (and, inside it, launch to exec-ready),
the exec round trip, a 1 MiB write_file+read_file, N concurrent launches, pool acquire
latency and refill time, and 50 concurrent execs across sandboxes through sandboxer.aio
(raw side: the same execs from 50 threads); with --images, sandboxer/debian's first use
and cached launch beside each engine's own path, and against the built-in image
(bench/_images.py). Prints medians, min-max and sandboxer/raw,
and writes JSON (default bench/results/latest.json). It never asserts a timing: --quick
(a couple of minutes for all three engines) is for CI logs. A measurement whose engine
calls fail is reported, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
from _drivers import Driver, SandboxerDriver, raw_driver
from _images import IMAGE_FULL, IMAGE_QUICK, ImageReps, image_results
from _stats import Result, Summary, interleave, result, table, timed

import sandboxer
from sandboxer import aio
from sandboxer._pool import Pool

BACKENDS = ("docker", "incus", "libvirt")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
MIB = 1024 * 1024


@attrs.frozen
class Reps:
    """How many times each measurement runs on one backend (0 skips it)."""

    launch: int
    exec: int
    files: int
    concurrent: int
    concurrency: int  # sandboxes launched at once
    pool_size: int
    pool_acquire: int
    pool_refill: int
    aio: int


FULL = {
    "docker": Reps(20, 200, 20, 5, 20, 4, 50, 3, 5),
    "incus": Reps(20, 200, 20, 5, 10, 4, 50, 3, 5),
    "libvirt": Reps(5, 50, 5, 2, 3, 2, 10, 1, 3),
}
QUICK = {
    "docker": Reps(3, 20, 2, 1, 20, 3, 10, 1, 1),
    "incus": Reps(3, 20, 2, 1, 10, 3, 10, 1, 1),
    "libvirt": Reps(1, 10, 1, 0, 3, 0, 0, 0, 0),  # the essentials: a VM boot is seconds
}

Sides = dict[str, Driver]


# --- measurements: one small function each --------------------------------------------


def launch_exec_destroy(backend: str, sides: Sides, reps: int) -> list[Result]:
    """One sandbox's whole life; its first part is the time to exec-ready."""
    ready: dict[str, list[float]] = {name: [] for name in sides}

    def life(name: str, driver: Driver) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            box = driver.launch()
            try:
                driver.exec(box, ["true"])
                ready[name].append(time.perf_counter() - started)
            finally:
                driver.destroy(box)
            return time.perf_counter() - started

        return run

    total = interleave(reps, {name: life(name, d) for name, d in sides.items()})
    unit = "s" if backend == "libvirt" else "ms"
    return [
        result(backend, "launch+exec+destroy", total, unit=unit),
        result(backend, "launch to exec-ready", ready, unit=unit),
    ]


def launch_many(
    driver: Driver,
    count: int,
    prepare: Callable[[Any], object] | None = None,
    threads: int | None = None,
) -> list[Any]:
    """`count` sandboxes launched in parallel (each then given to `prepare`); if any of
    that fails, the others are destroyed and the first error raised."""

    def one() -> Any:
        box = driver.launch()
        try:
            if prepare is not None:
                prepare(box)
        except BaseException:
            driver.destroy(box)
            raise
        return box

    with ThreadPoolExecutor(threads or count) as pool:
        futures = [pool.submit(one) for _ in range(count)]
    boxes = [f.result() for f in futures if f.exception() is None]
    failures = [error for f in futures if (error := f.exception()) is not None]
    if failures:
        destroy_all(driver, boxes)
        raise failures[0]
    return boxes


def destroy_all(driver: Driver, boxes: list[Any]) -> None:
    if boxes:
        with ThreadPoolExecutor(len(boxes)) as pool:
            list(pool.map(driver.destroy, boxes))


def with_boxes(sides: Sides, count: int, body: Callable[[dict[str, list[Any]]], Result]) -> Result:
    """Run `body` with `count` running sandboxes per side; destroy them whatever happens."""
    boxes: dict[str, list[Any]] = {}
    try:
        for name, driver in sides.items():
            boxes[name] = launch_many(driver, count)
        return body(boxes)
    finally:
        for name, made in boxes.items():
            destroy_all(sides[name], made)


def exec_round_trip(backend: str, sides: Sides, reps: int) -> Result:
    def body(boxes: dict[str, list[Any]]) -> Result:
        def one(name: str) -> Callable[[], float]:
            return lambda: timed(lambda: sides[name].exec(boxes[name][0], ["true"]))

        return result(backend, "exec round trip", interleave(reps, {n: one(n) for n in sides}))

    return with_boxes(sides, 1, body)


def file_round_trip(backend: str, sides: Sides, reps: int) -> Result:
    payload = os.urandom(MIB)

    def body(boxes: dict[str, list[Any]]) -> Result:
        def one(name: str) -> Callable[[], float]:
            driver, box = sides[name], boxes[name][0]

            def run() -> float:
                started = time.perf_counter()
                driver.write(box, "/tmp/bench.bin", payload)
                back = driver.read(box, "/tmp/bench.bin")
                elapsed = time.perf_counter() - started
                if back != payload:
                    raise RuntimeError(f"{name}: the file came back different")
                return elapsed

            return run

        samples = interleave(reps, {n: one(n) for n in sides})
        return result(backend, "write_file+read_file 1 MiB", samples)

    return with_boxes(sides, 1, body)


def concurrent_launches(backend: str, sides: Sides, reps: int, count: int) -> Result:
    """`count` launches at once, each to exec-ready: the wall time until all are."""

    def one(driver: Driver) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            boxes = launch_many(driver, count, prepare=lambda box: driver.exec(box, ["true"]))
            elapsed = time.perf_counter() - started
            destroy_all(driver, boxes)
            return elapsed

        return run

    samples = interleave(reps, {name: one(d) for name, d in sides.items()})
    unit = "s" if backend == "libvirt" else "ms"
    return result(backend, f"{count} concurrent launches to exec-ready", samples, unit=unit)


def pool_acquire(backend: str, reps: int, size: int, raw_ready: Summary | None) -> Result:
    """Time to get a sandbox out of a warm pool; raw = launching one by hand to exec-ready."""
    samples: list[float] = []
    with Pool(image="sandboxer/minimal", backend=backend, size=size) as pool:
        for _ in range(reps):
            if not pool.wait_ready(600):
                raise RuntimeError("the pool did not fill")
            lease = pool.acquire()
            started = time.perf_counter()
            sandbox = lease.__enter__()
            samples.append(time.perf_counter() - started)
            sandbox.exec(["true"])
            lease.__exit__(None, None, None)
    note = f"warm pool of {size}; raw = one launch to exec-ready"
    acquired = result(backend, "pool acquire", {"sandboxer": samples}, note=note)
    return attrs.evolve(acquired, raw=raw_ready)


def pool_refill(backend: str, raw: Driver, reps: int, size: int) -> Result:
    """Time for an empty pool to fill; raw = the same launches on the same number of threads."""
    workers = min(size, 4)  # the pool's default

    def fill() -> float:
        started = time.perf_counter()
        with Pool(image="sandboxer/minimal", backend=backend, size=size) as pool:
            if not pool.wait_ready(600):
                raise RuntimeError("the pool did not fill")
            return time.perf_counter() - started

    def by_hand() -> float:
        started = time.perf_counter()
        boxes = launch_many(raw, size, threads=workers)
        elapsed = time.perf_counter() - started
        destroy_all(raw, boxes)
        return elapsed

    samples = interleave(reps, {"sandboxer": fill, "raw": by_hand})
    note = f"{size} sandboxes, {workers} threads"
    return result(backend, "pool refill from empty", samples, unit="s", note=note)


def aio_execs(backend: str, raw: Driver, reps: int, boxes: int = 5, calls: int = 50) -> Result:
    """`calls` concurrent execs over `boxes` sandboxes from one event loop; raw = threads."""
    loop = asyncio.new_event_loop()
    sandboxes: list[aio.AsyncSandbox] = []

    async def start() -> None:
        launches = (aio.launch(image="sandboxer/minimal", backend=backend) for _ in range(boxes))
        made = await asyncio.gather(*launches, return_exceptions=True)
        sandboxes.extend(m for m in made if isinstance(m, aio.AsyncSandbox))
        for outcome in made:
            if isinstance(outcome, BaseException):
                raise outcome

    async def burst() -> None:
        await asyncio.gather(*(sandboxes[i % boxes].exec(["true"]) for i in range(calls)))

    async def stop() -> None:
        await asyncio.gather(*(sb.destroy() for sb in sandboxes))

    def threaded(raw_boxes: list[Any]) -> None:
        with ThreadPoolExecutor(calls) as threads:
            futures = [
                threads.submit(raw.exec, raw_boxes[i % boxes], ["true"]) for i in range(calls)
            ]
        for future in futures:
            future.result()

    try:
        loop.run_until_complete(start())
        raw_boxes = launch_many(raw, boxes)
        try:
            samples = interleave(
                reps,
                {
                    "sandboxer": lambda: timed(lambda: loop.run_until_complete(burst())),
                    "raw": lambda: timed(lambda: threaded(raw_boxes)),
                },
            )
        finally:
            destroy_all(raw, raw_boxes)
    finally:
        loop.run_until_complete(stop())
        loop.close()
    note = f"across {boxes} sandboxes; raw = {calls} threads"
    return result(backend, f"{calls} concurrent execs (asyncio)", samples, note=note)


# --- the run ----------------------------------------------------------------------------


def warm_up(sides: Sides) -> list[Result]:
    for driver in sides.values():
        driver.destroy(driver.launch())
    return []


@attrs.define
class Run:
    """What one backend gave: results, measurements that failed, the engine's version."""

    results: list[Result] = attrs.Factory(list)
    failures: dict[str, str] = attrs.Factory(dict)
    engine: str = ""


def bench_backend(backend: str, reps: Reps, images: ImageReps | None = None) -> Run:
    raw = raw_driver(backend)
    sides: Sides = {"sandboxer": SandboxerDriver(backend), "raw": raw}
    run = Run()

    def step(name: str, measure: Callable[[], Result | list[Result]]) -> None:
        """One measurement; a failure is reported and the next measurement still runs."""
        started = time.monotonic()
        try:
            outcome = measure()
        except Exception as exc:
            run.failures[f"{backend}: {name}"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            return
        run.results.extend(outcome if isinstance(outcome, list) else [outcome])
        print(f"  {backend}: {name} ({time.monotonic() - started:.1f}s)", file=sys.stderr)

    def raw_ready() -> Summary | None:
        """Launch to exec-ready by hand, in ms: what a pool saves."""
        for r in run.results:
            if r.metric == "launch to exec-ready" and r.raw is not None:
                return r.raw.in_ms(r.unit)
        return None

    try:
        step("warm-up (image build, connections, imports)", lambda: warm_up(sides))
        step("launch+exec+destroy", lambda: launch_exec_destroy(backend, sides, reps.launch))
        if reps.exec:
            step("exec round trip", lambda: exec_round_trip(backend, sides, reps.exec))
        if reps.files:
            step("files", lambda: file_round_trip(backend, sides, reps.files))
        if reps.concurrent:
            step(
                "concurrent launches",
                lambda: concurrent_launches(backend, sides, reps.concurrent, reps.concurrency),
            )
        if reps.pool_acquire:
            step(
                "pool acquire",
                lambda: pool_acquire(backend, reps.pool_acquire, reps.pool_size, raw_ready()),
            )
        if reps.pool_refill:
            step("pool refill", lambda: pool_refill(backend, raw, reps.pool_refill, reps.pool_size))
        if reps.aio:
            step("asyncio execs", lambda: aio_execs(backend, raw, reps.aio))
        if images is not None:
            step("images (sandboxer/debian)", lambda: image_results(backend, images))
        run.engine = raw.version()
        return run
    finally:
        raw.close()


def unavailable(backend: str) -> str | None:
    """Why `backend` cannot be benchmarked now, or None."""
    try:
        sandboxer.select(backend=backend)
    except sandboxer.SandboxError as exc:
        return str(exc).splitlines()[0]
    return None


def machine() -> dict[str, Any]:
    fields: dict[str, str] = {}
    for source in ("/proc/cpuinfo", "/proc/meminfo"):
        for line in Path(source).read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    memory_kib = int(fields.get("MemTotal", "0 kB").split()[0])
    return {
        "cpu": fields.get("model name", "unknown"),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.freedesktop_os_release().get("PRETTY_NAME", platform.system()),
        "python": platform.python_version(),
        "sandboxer": sandboxer.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=",".join(BACKENDS), help="comma-separated engines")
    parser.add_argument("--quick", action="store_true", help="few repetitions, for CI logs")
    parser.add_argument(
        "--images", action="store_true", help="also measure sandboxer/debian (bench/_images.py)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backend.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    plans = QUICK if args.quick else FULL
    image_plans = (IMAGE_QUICK if args.quick else IMAGE_FULL) if args.images else None

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results: list[Result] = []
    engines: dict[str, str] = {}
    failures: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for backend in names:
        why = unavailable(backend)
        if why is not None:
            skipped[backend] = why
            print(f"{backend}: skipped ({why})", file=sys.stderr)
            continue
        print(f"{backend}: measuring ...", file=sys.stderr, flush=True)
        backend_started = time.monotonic()
        images = image_plans[backend] if image_plans is not None else None
        run = bench_backend(backend, plans[backend], images)
        results += run.results
        failures.update(run.failures)
        engines[backend] = run.engine
        print(f"{backend}: done in {time.monotonic() - backend_started:.0f}s", file=sys.stderr)

    info = {**machine(), "engines": engines, "load_1min": [load_before, os.getloadavg()[0]]}
    print(
        f"\nMachine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"{info['os']}, kernel {info['kernel']}, Python {info['python']}"
    )
    print(f"Engines: {'; '.join(engines.values()) or 'none'}")
    print(
        f"Load average (1 min) before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}; "
        f"mode: {'quick' if args.quick else 'full'}; ratio = sandboxer / raw (lower is better)\n"
    )
    print(table(results))
    for backend, why in skipped.items():
        print(f"\n{backend}: skipped ({why})")
    for measurement, error in failures.items():
        print(f"\nFAILED {measurement}: {error}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": info,
                "quick": args.quick,
                "seconds": round(time.monotonic() - started, 1),
                "results": [r.to_dict() for r in results],
                "failures": failures,
                "skipped": skipped,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.json}")
    return 1 if failures else 0  # an engine call that fails is a bug; slowness is not


if __name__ == "__main__":
    sys.exit(main())
