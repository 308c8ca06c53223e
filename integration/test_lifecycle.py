"""stop/start, --hostname, -P and the foreground command's entrypoint on real engines,
through the `sandboxer` command (a stopped sandbox is found again by name: `attach`).

What a stopped sandbox keeps of its own file system is the engine's (docs/backends.md):
the contract (sandboxer/testing/_contract_lifecycle.py) holds what every engine keeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from helpers.images import PushedImages, base_in_docker, build_and_push
from helpers.registry import Registry

import sandboxer
from sandboxer.testing.contract import http_get

# Whether a file written on the root file system is still there after stop and start.
KEEPS_WRITABLE_LAYER = {"docker": True, "incus": True, "libvirt": False}
FORK_BOMB = "for i in $(seq 40); do sleep 3 & done; wait"
MAIN_MARK = "1000003"  # the main process's sleep, told apart in `ps`


class Cli:
    """`sandboxer` in a subprocess, in a session of its own for the clean-up."""

    def __init__(self) -> None:
        self.env = {**os.environ, "SANDBOXER_SESSION": f"lifecycle-{uuid.uuid4().hex[:8]}"}

    def __call__(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "sandboxer.cli", *argv],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )
        assert not check or done.returncode == 0, (argv, done.stderr)
        return done


@pytest.fixture
def cli() -> Iterator[Cli]:
    runner = Cli()
    yield runner
    runner("gc", "--include-kept", check=False)


def test_stop_and_start_from_the_cli(cli: Cli, backend: str) -> None:
    name = cli(
        "run", "-d", "--backend", backend, "--profile", "default", "--pids", "16",
        "--hostname", "life.example", "sandboxer/minimal", "sleep", MAIN_MARK,
    ).stdout.strip()  # fmt: skip
    cli("exec", name, "--", "sh", "-c", "echo layer > /kept.txt")
    assert cli("stop", "-t", "5", name).stdout == f"{name}\n"
    listed = json.loads(cli("ls", "--json", "--backend", backend).stdout)
    assert [entry["state"] for entry in listed if entry["name"] == name] == ["stopped"]
    assert cli("exec", name, "--", "true", check=False).returncode != 0  # nothing runs

    assert json.loads(cli("start", "--json", name).stdout) == {"started": [name], "failures": {}}
    assert cli("exec", name, "--", "hostname").stdout == "life.example\n"
    assert cli("exec", name, "--", "cat", "/etc/hostname").stdout == "life.example\n"
    assert MAIN_MARK in cli("exec", name, "--", "ps").stdout  # the main process is back
    kept = cli("exec", name, "--", "cat", "/kept.txt", check=False)
    assert (kept.returncode == 0 and kept.stdout == "layer\n") is KEEPS_WRITABLE_LAYER[backend]
    # The pids limit bites again after the start.
    bomb = cli("exec", "--timeout", "60", name, "--", "sh", "-c", FORK_BOMB, check=False)
    assert "fork" in bomb.stderr.lower() or "resource" in bomb.stderr.lower(), bomb
    assert cli("rm", name).stdout == f"{name}\n"


# An image that exposes a TCP port and serves it, and an unused UDP one.
EXPOSING_DOCKERFILE = """FROM {base}
EXPOSE 8080/tcp 9999/udp
CMD ["python3", "-m", "http.server", "-b", "0.0.0.0", "-d", "/etc", "8080"]
"""


@pytest.fixture(scope="module")
def exposing_image(local_registry: Registry) -> str:
    base, _ = base_in_docker()
    files = {"Dockerfile": EXPOSING_DOCKERFILE.format(base=base)}
    digest = build_and_push(local_registry, "sandboxer-test/exposing", "1", files)
    return f"{local_registry.host}/sandboxer-test/exposing@{digest}"


def test_publish_all_publishes_what_the_image_exposes(backend: str, exposing_image: str) -> None:
    with sandboxer.launch(backend=backend, image=exposing_image, publish_all=True) as sb:
        host_ip, host_port = sb.ports[8080]
        assert sb.port(9999, "udp")[1] > 0
        assert http_get(f"http://{host_ip}:{host_port}/hostname", wait=120) == (
            f"{sb.name}\n".encode()
        )


def test_foreground_run_goes_through_the_image_entrypoint(
    cli: Cli, backend: str, pushed_images: PushedImages
) -> None:
    app = pushed_images.app
    # The app image's ENTRYPOINT records its arguments, then runs them (`exec "$@"`).
    shown = cli("run", "--backend", backend, app, "sh", "-c", "cat /tmp/entrypoint-ran; exit 3",
                check=False)  # fmt: skip
    assert shown.returncode == 3, shown.stderr
    assert shown.stdout.startswith("args=sh -c cat /tmp/entrypoint-ran; exit 3 uid=1000 ")
