"""Integration tests run on real engines, chosen with --backends (default: all three).

A requested engine that is missing fails the tests that need it: nothing skips.
"""

from __future__ import annotations

import pytest

ALL_BACKENDS = ("docker", "incus", "libvirt")


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
