"""`Sandbox.pty` and `Pty`: size and arguments checked first, TERM, reads that tell a
quiet terminal from an ended one, a bounded backlog, resize, wait, kill and close."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

import sandboxer
from sandboxer import ExecTimeout, InvalidSpec, Pty, Sandbox
from sandboxer._backend import ExitStatus, TerminalSize
from sandboxer._pty import PTY_KEPT
from sandboxer.testing import FakeBackend
from sandboxer.testing._scripted import ScriptedChannel


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with sandboxer.launch(backend="fake", env={"FROM_SPEC": "1"}) as sandbox:
        yield sandbox


def _shown(terminal: Pty) -> bytes:
    """Everything the terminal shows until it ends."""
    seen = b""
    while data := terminal.read(timeout=10):
        seen += data
    return seen


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"size": (0, 80)}, "size"),
        ({"size": (24, 70000)}, "size"),
        ({"size": (24,)}, "size"),
        ({"size": "24x80"}, "size"),
        ({"size": (24.0, 80)}, "size"),
        ({"command": []}, "command"),
        ({"env": {"A": "\0"}}, "env['A']"),
        ({"workdir": "/sys"}, "workdir"),
        ({"user": ""}, "user"),
        ({"timeout": -2}, "timeout"),
    ],
)
def test_bad_arguments_fail_before_the_engine(
    sb: Sandbox, arguments: dict[str, Any], field: str
) -> None:
    before = len(FakeBackend.sandboxes[sb.name].calls)
    with pytest.raises(InvalidSpec) as raised:
        sb.pty(**arguments)
    assert raised.value.field == field
    assert len(FakeBackend.sandboxes[sb.name].calls) == before


def test_a_shell_by_default_on_a_terminal_of_the_size_asked(sb: Sandbox) -> None:
    with sb.pty(size=(33, 101)) as terminal:
        assert terminal.argv == ("/bin/sh",)
        terminal.write(b"stty size; tty\n")
        terminal.write("exit 3\n")
        assert terminal.wait(timeout=10) == 3
        shown = _shown(terminal)
    assert b"33 101\r\n" in shown and b"/dev/pts/0" in shown
    assert b"stty size; tty" in shown  # echoed


@pytest.mark.parametrize(
    ("env", "term"),
    [(None, b"TERM=xterm"), ({"TERM": "vt100"}, b"TERM=vt100")],
)
def test_term_is_xterm_unless_given(sb: Sandbox, env: dict[str, str] | None, term: bytes) -> None:
    with sb.pty(["env"], env=env) as terminal:
        terminal.wait(timeout=10)
        lines = _shown(terminal).splitlines()
    assert term in lines and b"FROM_SPEC=1" in lines


def test_read_tells_quiet_from_ended() -> None:
    channel = ScriptedChannel()
    terminal = Pty(channel, ("sh",))
    assert terminal.read(timeout=0.01) is None  # nothing yet, still running
    channel.send("stdout", b"abcdef")
    assert terminal.read(timeout=10, max_bytes=4) == b"abcd"
    assert terminal.read(timeout=10) == b"ef"
    channel.finish(ExitStatus(0))
    assert terminal.read(timeout=10) == b""
    assert terminal.read() == b""


@pytest.mark.parametrize("max_bytes", [0, -1, True, 1.0])
def test_read_checks_max_bytes(max_bytes: Any) -> None:
    with Pty(ScriptedChannel(), ("sh",)) as terminal:
        with pytest.raises(InvalidSpec) as raised:
            terminal.read(0, max_bytes)
        assert raised.value.field == "max_bytes"


def test_unread_output_keeps_its_newest_mebibyte() -> None:
    channel = ScriptedChannel()
    terminal = Pty(channel, ("sh",))
    channel.send("stdout", b"old" * 1000)
    channel.send("stdout", b"n" * PTY_KEPT)
    channel.finish(ExitStatus(0))
    terminal.wait(timeout=10)
    kept = b""
    while data := terminal.read(timeout=10):
        kept += data
    assert kept == b"n" * PTY_KEPT


def test_resize_is_checked_and_passed_on() -> None:
    channel = ScriptedChannel()
    with Pty(channel, ("sh",)) as terminal:
        terminal.resize(50, 132)
        for rows, cols, field in [(0, 80, "rows"), (24, 65536, "cols"), ("24", 80, "rows")]:
            with pytest.raises(InvalidSpec) as raised:
                terminal.resize(rows, cols)
            assert raised.value.field == field
    assert channel.sizes == [TerminalSize(50, 132)]


def test_wait_timeout_leaves_it_running_and_kill_ends_it() -> None:
    channel = ScriptedChannel()
    terminal = Pty(channel, ("sh",))
    with pytest.raises(ExecTimeout) as raised:
        terminal.wait(timeout=0.05)
    assert not raised.value.killed and terminal.running and terminal.exit_code is None
    terminal.kill(signal.SIGHUP)
    terminal.kill()
    assert terminal.wait(timeout=10) == 137 == terminal.exit_code
    assert channel.signals == [signal.SIGHUP, signal.SIGKILL]


def test_close_kills_a_running_terminal_once(sb: Sandbox) -> None:
    terminal = sb.pty()
    terminal.close()
    assert not terminal.running and terminal.exit_code == 128 + signal.SIGKILL
    terminal.close()


def test_the_pty_timeout_kills(sb: Sandbox) -> None:
    with sb.pty(timeout=0.2) as terminal:
        assert terminal.wait(timeout=10) == -signal.SIGKILL
        assert terminal.timed_out


def test_writes_reach_the_command_as_bytes() -> None:
    channel = ScriptedChannel()
    with Pty(channel, ("sh",)) as terminal:
        terminal.write("é\r")
        with pytest.raises(InvalidSpec):
            terminal.write(None)  # type: ignore[arg-type]
    assert channel.written == ["é\r".encode()]
