"""Integration tests run on real engines, chosen with --backends (default: all three).

A requested engine that is missing fails the tests that need it: nothing skips.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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
