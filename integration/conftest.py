"""Integration tests run on real engines, chosen with --backends (default: all three).

A requested engine that is missing fails the tests that need it: nothing skips.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # integration/helpers, imported as `helpers`
from helpers.images import PushedImages, prepare
from helpers.registry import Registry, proxy_registry

ALL_BACKENDS = ("docker", "incus", "libvirt")
PROBE_SOURCE = Path(__file__).parent / "helpers" / "probe.c"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backends",
        default=",".join(ALL_BACKENDS),
        help="comma-separated engines the integration suite runs on (default: all)",
    )


def requested_backends(config: pytest.Config) -> list[str]:
    names = [n.strip() for n in str(config.getoption("--backends")).split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_BACKENDS))
    if unknown:
        raise pytest.UsageError(f"--backends: unknown {unknown}; known: {list(ALL_BACKENDS)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Class scope, so a contract class shares one sandbox per backend.
    # A class that names its own backend (a fixture) runs on that one only.
    if "backend" in metafunc.fixturenames and not hasattr(metafunc.cls, "backend"):
        metafunc.parametrize("backend", requested_backends(metafunc.config), scope="class")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Under xdist (`-n N --dist loadgroup`) each engine's tests run in one worker, in
    # order: engines run side by side (a VM boot under TCG beside Docker's waits), while
    # class-scoped sandboxes stay shared and no two tests race on one engine's state.
    # A module named after an engine (test_libvirt_vm.py) goes with that engine's tests.
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend is None:
            module = item.path.stem
            backend = next((name for name in ALL_BACKENDS if name in module), "any")
        item.add_marker(pytest.mark.xdist_group(str(backend)))


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """helpers/probe.c built static: the built-in images have no compiler and no libc."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the probe: apt-get install -y gcc libc6-dev"
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(
        [gcc, "-static", "-O2", "-Wall", "-Werror", "-o", str(out), str(PROBE_SOURCE)],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


@pytest.fixture(scope="session")
def local_registry() -> Registry:
    """The registry scripts/setup-engines.sh starts on 127.0.0.1:5000."""
    return Registry()


@pytest.fixture(scope="session")
def pushed_images(local_registry: Registry, request: pytest.FixtureRequest) -> PushedImages:
    """The test images in the local registry: built and pushed on a fresh machine, found
    there (by the hash of what they are built from) on every later run."""
    started = time.monotonic()
    images = prepare(local_registry)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"test images ready in {time.monotonic() - started:.1f}s")
    return images


@pytest.fixture(scope="session")
def mismatching_registry(local_registry: Registry, pushed_images: PushedImages) -> Iterator[str]:
    """host:port of a loopback registry whose manifests never match the digest asked for."""
    with proxy_registry(local_registry, lie=("sandboxer-test/app", "1")) as host:
        yield host
