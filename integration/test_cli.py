"""The `sandboxer` command run as a real subprocess against Docker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from sandboxer._ports import free_port


class Cli:
    """Runs `sandboxer` in a subprocess; every sandbox it makes is tagged for cleanup."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.env = {**os.environ, "SANDBOXER_SESSION": f"cli-test-{tag}"}

    def __call__(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sandboxer.cli", *argv],
            capture_output=True,
            text=True,
            env=self.env,
            input=stdin,
            timeout=120,
        )

    def listed(self) -> dict[str, dict[str, object]]:
        result = self("ls", "--json", "--backend", "docker", "--label", f"cli-test={self.tag}")
        assert result.returncode == 0, result.stderr
        return {entry["name"]: entry for entry in json.loads(result.stdout)}


@pytest.fixture
def cli() -> Iterator[Cli]:
    runner = Cli(uuid.uuid4().hex[:8])
    yield runner
    # $SANDBOXER_SESSION: everything this test made, kept ones too.
    runner("gc", "--backend", "docker", "--include-kept")


def test_run_passes_the_exit_code_and_streams(cli: Cli) -> None:
    started = time.monotonic()
    result = cli(
        "run",
        "--backend",
        "docker",
        "-l",
        f"cli-test={cli.tag}",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    )
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert cli.listed() == {}  # removed afterwards
    print(f"sandboxer run (process start to exit): {elapsed:.2f}s")


def test_run_with_volume_env_and_timeout(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "input.txt").write_text("from the host\n")
    tmp_path.chmod(0o755)  # the hardened profile's user (uid 1000) reads it
    result = cli(
        "run",
        "--backend",
        "docker",
        "-l",
        f"cli-test={cli.tag}",
        "-v",
        f"{tmp_path}:/data:ro",
        "-e",
        "GREETING=hello",
        "--",
        "sh",
        "-c",
        'cat /data/input.txt; echo "$GREETING"; touch /data/x',
    )
    assert result.returncode != 0  # the volume is read-only
    assert result.stdout == "from the host\nhello\n"
    assert "Read-only file system" in result.stderr
    result = cli(
        "run",
        "--backend",
        "docker",
        "-l",
        f"cli-test={cli.tag}",
        "--timeout",
        "1",
        "--",
        "sleep",
        "30",
    )
    assert result.returncode == 137 and "--timeout 1s" in result.stderr


def test_gc_with_sandboxer_session_takes_the_whole_session(cli: Cli) -> None:
    result = cli("run", "--backend", "docker", "-l", f"cli-test={cli.tag}", "--keep")
    assert result.returncode == 0, result.stderr
    result = cli("gc", "--backend", "docker", "--json")
    assert result.returncode == 0 and "only session cli-test-" in result.stderr
    assert json.loads(result.stdout)["removed"] == []  # made to be kept
    result = cli("gc", "--backend", "docker", "--include-kept", "--json")
    assert result.returncode == 0 and "only session cli-test-" in result.stderr
    assert len(json.loads(result.stdout)["removed"]) == 1
    assert cli.listed() == {}


def test_errors_exit_2_and_125_without_tracebacks(cli: Cli) -> None:
    result = cli("run", "--backend", "docker", "-v", "/no/such/dir:/x", "--", "true")
    assert result.returncode == 2 and "Mount.source" in result.stderr
    result = cli("run", "--backend", "docker", "--image", "sandboxer-test/absent:1", "--", "true")
    assert result.returncode == 125 and result.stderr.startswith("sandboxer: error:")
    assert "Traceback" not in result.stderr


def test_keep_ls_exec_publish_and_rm(cli: Cli) -> None:
    name = f"cli-{cli.tag}"
    port = free_port("127.0.0.1", "tcp")
    result = cli(
        "run",
        "--backend",
        "docker",
        "--name",
        name,
        "-l",
        f"cli-test={cli.tag}",
        "-p",
        f"127.0.0.1:{port}:8080",
        "--keep",
    )
    assert result.returncode == 0 and f"kept {name} on docker" in result.stderr, result.stderr

    entry = cli.listed()[name]
    assert entry["backend"] == "docker" and entry["state"] == "running"
    assert entry["owner_alive"] is False  # the `run` process that made it has exited
    assert entry["session"] == f"cli-test-{cli.tag}"

    result = cli(
        "exec", name, "--", "sh", "-c", "echo served > /tmp/index.html; httpd -p 8080 -h /tmp"
    )
    assert result.returncode == 0, result.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as response:
        assert response.read() == b"served\n"

    result = cli("exec", "-i", str(entry["id"])[:12], "--", "sh", "-c", "cat; exit 3", stdin="in\n")
    assert (result.returncode, result.stdout) == (3, "in\n")

    result = cli("rm", name)
    assert (result.returncode, result.stdout) == (0, f"{name}\n")
    assert name not in cli.listed()
    assert cli("exec", name, "--", "true").returncode == 125


def test_gc_reaps_kept_sandboxes_of_exited_runs_only_when_asked(cli: Cli) -> None:
    for index in range(2):
        result = cli(
            "run",
            "--backend",
            "docker",
            "--name",
            f"gc-{cli.tag}-{index}",
            "-l",
            f"cli-test={cli.tag}",
            "--network",
            "isolated",
            "--keep",
        )
        assert result.returncode == 0, result.stderr
    # Every session, but only ours by label: the owner-exited rule decides.
    sweep = ("gc", "--all-sessions", "--backend", "docker", "-l", f"cli-test={cli.tag}")
    result = cli(*sweep, "--dry-run", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["removed"] == []
    sweep = (*sweep, "--include-kept")
    result = cli(*sweep, "--dry-run", "--json")
    planned = json.loads(result.stdout)
    assert result.returncode == 0 and planned["dry_run"] is True
    assert {entry["name"] for entry in planned["removed"]} == {f"gc-{cli.tag}-0", f"gc-{cli.tag}-1"}
    assert len(cli.listed()) == 2

    result = cli(*sweep)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines())[0].startswith(f"removed docker/gc-{cli.tag}-0 ")
    assert cli.listed() == {}
    # The sandboxes' private networks went with them.
    assert docker.from_env().networks.list(names=[f"gc-{cli.tag}-0", f"gc-{cli.tag}-1"]) == []
