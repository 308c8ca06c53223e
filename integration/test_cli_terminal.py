"""`sandboxer run -it` and `sandboxer shell` in a real terminal: tmux runs the CLI in a
pane, types into it and reads the screen back, on every requested engine."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Launching may pull an image into an engine's store; a shell answers in well under this.
DEADLINE = 120.0
_POLL = 0.1


class Pane:
    """One tmux pane on a tmux server of its own (never the user's), 80x24 at first."""

    def __init__(self, command: str) -> None:
        tmux = shutil.which("tmux")
        assert tmux, "tmux is needed: apt-get install -y tmux (scripts/setup-python.sh does)"
        self._tmux = [tmux, "-L", f"sandboxer-test-{uuid.uuid4().hex[:8]}"]
        self._call("new-session", "-d", "-s", "t", "-x", "80", "-y", "24", command)

    def _call(self, *argv: str) -> str:
        done = subprocess.run(
            [*self._tmux, *argv], capture_output=True, text=True, check=True, timeout=30
        )
        return done.stdout

    def screen(self) -> str:
        """What the pane shows, with its scrollback."""
        return self._call("capture-pane", "-p", "-J", "-S", "-", "-t", "t")

    def type(self, text: str) -> None:
        self._call("send-keys", "-t", "t", "-l", text)
        self._call("send-keys", "-t", "t", "Enter")

    def key(self, name: str) -> None:
        self._call("send-keys", "-t", "t", name)

    def resize(self, cols: int, rows: int) -> None:
        self._call("resize-window", "-t", "t", "-x", str(cols), "-y", str(rows))

    def wait_for(self, pattern: str) -> str:
        """The screen once `pattern` (a regex) shows on it; fails past DEADLINE."""
        return _poll(lambda: self.screen(), lambda text: re.search(pattern, text) is not None)

    def child_pid(self) -> int:
        """The pid of what the pane's shell runs (the CLI)."""
        shell = self._call("display-message", "-p", "-t", "t", "#{pane_pid}").strip()
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def close(self) -> None:
        subprocess.run([*self._tmux, "kill-server"], capture_output=True, timeout=30)


def _poll(read: Callable[[], str], done: Callable[[str], bool]) -> str:
    deadline = time.monotonic() + DEADLINE
    while True:
        text = read()
        if done(text) or time.monotonic() > deadline:
            assert done(text), f"not seen within {DEADLINE:g}s; last seen:\n{text}"
            return text
        time.sleep(_POLL)


def _file(path: Path) -> str:
    return _poll(lambda: path.read_text() if path.exists() else "", bool)


class Cli:
    """The CLI as a shell command line, its sandboxes tagged for the test's cleanup."""

    def __init__(self, tmp_path: Path) -> None:
        self.session = f"cli-terminal-{uuid.uuid4().hex[:8]}"
        self.tmp_path = tmp_path

    def words(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "sandboxer.cli", *argv]

    def line(self, *argv: str) -> str:
        """A shell line running the CLI, then saving its exit code and our terminal's
        settings as they are once it returned."""
        exit_file, stty_file = self.tmp_path / "exit", self.tmp_path / "stty"
        command = shlex.join(["env", f"SANDBOXER_SESSION={self.session}", *self.words(*argv)])
        return (
            f"{command}; echo $? > {exit_file}; stty -a > {stty_file}.part; "
            f"mv {stty_file}.part {stty_file}; exec sleep 600"
        )

    def __call__(self, *argv: str) -> str:
        env_words = ["env", f"SANDBOXER_SESSION={self.session}"]
        done = subprocess.run(
            [*env_words, *self.words(*argv)], capture_output=True, text=True, timeout=DEADLINE
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def listed(self, backend: str) -> list[object]:
        """This test's sandboxes on `backend`."""
        found = json.loads(self("ls", "--json", "--backend", backend))
        return [entry["name"] for entry in found if entry["session"] == self.session]

    def exit_code(self) -> int:
        return int(_file(self.tmp_path / "exit"))

    def settings(self) -> str:
        return _file(self.tmp_path / "stty")


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path)
    yield runner
    runner("gc", "--include-kept")  # everything this test made, detached ones too


@pytest.fixture
def panes() -> Iterator[list[Pane]]:
    opened: list[Pane] = []
    yield opened
    for pane in opened:
        pane.close()


def _drive(pane: Pane, cli: Cli) -> None:
    """Type, resize, interrupt and exit a shell on the pane's terminal."""
    pane.type("echo hi-$((6*7))")
    pane.wait_for(r"(?m)^hi-42\s*$")
    pane.resize(100, 30)
    pane.type("stty size")
    pane.wait_for(r"(?m)^30 100\s*$")
    # Ctrl-C reaches the command in the sandbox (raw mode passes it as a byte): the shell
    # comes back long before the sleep would have ended.
    pane.type("sh -c 'echo started-$((3+4)); exec sleep 1000'")
    pane.wait_for(r"(?m)^started-7\s*$")
    pane.key("C-c")
    pane.type("echo status-$?")
    pane.wait_for(r"(?m)^status-130\s*$")
    pane.type("exit 3")
    assert cli.exit_code() == 3
    # Our terminal is back in its own (cooked) mode: line editing and echo on.
    flags = cli.settings().split()
    assert "icanon" in flags and "echo" in flags and "-icanon" not in flags, flags


def test_run_it_gives_a_terminal_and_gives_ours_back(
    backend: str, cli: Cli, panes: list[Pane]
) -> None:
    pane = Pane(cli.line("run", "-it", "--backend", backend, "sandboxer/minimal", "sh"))
    panes.append(pane)
    _drive(pane, cli)


def test_shell_attaches_to_a_detached_sandbox(backend: str, cli: Cli, panes: list[Pane]) -> None:
    name = cli("run", "-d", "--backend", backend, "sandboxer/minimal").strip()
    pane = Pane(cli.line("shell", name))
    panes.append(pane)
    _drive(pane, cli)
    # The shell's end is not the sandbox's: it was made with -d and keeps running.
    assert cli("exec", name, "echo", "still-here") == "still-here\n"


def test_sigterm_gives_our_terminal_back_and_removes_the_sandbox(
    backend: str, cli: Cli, panes: list[Pane]
) -> None:
    pane = Pane(cli.line("run", "-it", "--backend", backend, "sandboxer/minimal", "sh"))
    panes.append(pane)
    pane.type("echo hi-$((6*7))")
    pane.wait_for(r"(?m)^hi-42\s*$")
    os.kill(pane.child_pid(), signal.SIGTERM)
    assert cli.exit_code() == 128 + signal.SIGTERM
    flags = cli.settings().split()
    assert "icanon" in flags and "echo" in flags and "-icanon" not in flags, flags
    assert cli.listed(backend) == []
