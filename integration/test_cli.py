"""The `sandboxer` command run as a real subprocess: on every requested engine (the
`backend` fixture) for the docker-run habits, on Docker for the rest."""

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
from helpers.images import PushedImages

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

    def listed(self, backend: str = "docker") -> dict[str, dict[str, object]]:
        result = self("ls", "--json", "--backend", backend, "--label", f"cli-test={self.tag}")
        assert result.returncode == 0, result.stderr
        return {entry["name"]: entry for entry in json.loads(result.stdout)}


@pytest.fixture
def cli() -> Iterator[Cli]:
    runner = Cli(uuid.uuid4().hex[:8])
    yield runner
    # $SANDBOXER_SESSION: everything this test made on any engine, detached ones too.
    runner("gc", "--include-kept")


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
    assert result.returncode == 2 and "error: -v: does not exist" in result.stderr
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
    assert (result.returncode, result.stdout) == (0, f"{name}\n"), result.stderr

    entry = cli.listed()[name]
    assert entry["backend"] == "docker" and entry["state"] == "running"
    assert entry["owner_alive"] is False  # the `run` process that made it has exited
    assert entry["session"] == f"cli-test-{cli.tag}"

    result = cli("exec", name, "sh", "-c", "echo served > /tmp/index.html; httpd -p 8080 -h /tmp")
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


# docker-run habits, on every requested engine ------------------------------------------
def test_run_image_command(cli: Cli, backend: str) -> None:
    result = cli(
        "run",
        "--backend",
        backend,
        "-l",
        f"cli-test={cli.tag}",
        "-e",
        "GREETING=hi",
        "sandboxer/minimal",
        "sh",
        "-c",
        'echo "$GREETING"; echo err >&2; exit 7',
    )
    assert (result.returncode, result.stdout, result.stderr) == (7, "hi\n", "err\n")
    assert cli.listed(backend) == {}


def _logs_until(cli: Cli, name: str, text: str) -> str:
    """The sandbox's logs once they hold `text` (a VM's console takes a moment)."""
    deadline = time.monotonic() + 60
    while True:
        result = cli("logs", name)
        assert result.returncode == 0, result.stderr
        if text in result.stdout or time.monotonic() > deadline:
            return result.stdout
        time.sleep(0.5)


def test_detached_logs_cp_inspect_top_rm(cli: Cli, backend: str, tmp_path: Path) -> None:
    result = cli(
        "run",
        "--backend",
        backend,
        "-d",
        "--json",
        "-l",
        f"cli-test={cli.tag}",
        "sandboxer/minimal",
        "sh",
        "-c",
        "echo started-main; exec sleep 600",
    )
    assert result.returncode == 0, result.stderr
    launched = json.loads(result.stdout)
    name = launched["name"]
    assert launched["backend"] == backend and launched["id"]
    assert "started-main" in _logs_until(cli, name, "started-main")

    (tmp_path / "in.txt").write_text("from the host\n")
    assert cli("cp", str(tmp_path / "in.txt"), f"{name}:/tmp/").returncode == 0
    result = cli("exec", name, "cat", "/tmp/in.txt")
    assert (result.returncode, result.stdout) == (0, "from the host\n")
    assert cli("exec", name, "sh", "-c", "echo from the sandbox > /tmp/out.txt").returncode == 0
    result = cli("cp", f"{name}:/tmp/out.txt", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_text() == "from the sandbox\n"
    result = cli("cp", f"{name}:/tmp/out.txt", str(tmp_path / "out.txt"))
    assert result.returncode == 2 and "add --overwrite" in result.stderr

    result = cli("inspect", "--json", name)
    details = json.loads(result.stdout)
    assert (details["backend"], details["name"], details["state"]) == (backend, name, "running")
    assert details["labels"]["sandboxer.keep"] == "true"
    assert details["labels"]["cli-test"] == cli.tag

    result = cli("top", name)
    assert result.returncode == 0 and "sleep" in result.stdout, result.stderr

    result = cli("rm", "--json", name)
    assert result.returncode == 0 and json.loads(result.stdout) == {
        "removed": [name],
        "failures": {},
    }
    assert cli.listed(backend) == {}


def test_logs_follow_ends_with_the_main_process(cli: Cli) -> None:
    # Docker stops a container whose main process exits; Incus and libvirt sandboxes keep
    # running (their init stays), so there `logs -f` follows until Ctrl-C.
    result = cli(
        "run",
        "--backend",
        "docker",
        "-d",
        "-l",
        f"cli-test={cli.tag}",
        "sandboxer/minimal",
        "sh",
        "-c",
        "echo first; sleep 2; echo second",
    )
    assert result.returncode == 0, result.stderr
    result = cli("logs", "-f", result.stdout.strip())
    assert (result.returncode, result.stdout) == (0, "first\nsecond\n")


def test_run_registry_image_with_cli_flags(
    cli: Cli, pushed_images: PushedImages, tmp_path: Path
) -> None:
    env_file = tmp_path / "vars.env"
    env_file.write_text("# settings\nFROM_FILE=a b\n")
    result = cli(
        "run",
        "--backend",
        "docker",
        "-l",
        f"cli-test={cli.tag}",
        "--pull",
        "missing",
        "--env-file",
        str(env_file),
        "--profile",
        "default",
        "--read-only",
        pushed_images.app,
        "sh",
        "-c",
        'echo "$FROM_FILE"; touch /tmp/x',
    )
    assert result.returncode != 0 and result.stdout == "a b\n"
    assert "Read-only file system" in result.stderr
