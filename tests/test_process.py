"""`Sandbox.spawn` and `Process`: arguments checked first, output kept within its cap,
waits that leave the command running, kills, and closing."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sandboxer
from sandboxer import ExecTimeout, InvalidSpec, OutputTooLarge, Process, Sandbox
from sandboxer._backend import ExitStatus
from sandboxer.testing import FakeBackend
from sandboxer.testing._scripted import ScriptedChannel


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with sandboxer.launch(backend="fake") as sandbox:
        yield sandbox


def _calls(sandbox: Sandbox) -> int:
    return len(FakeBackend.sandboxes[sandbox.name].calls)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"command": []}, "command"),
        ({"command": ["echo", "a\0b"]}, "command"),
        ({"command": 7}, "command"),
        ({"env": {"1BAD": "x"}}, "env['1BAD']"),
        ({"env": "A=1"}, "env"),
        ({"workdir": "relative"}, "workdir"),
        ({"workdir": "/proc/1"}, "workdir"),
        ({"user": "a b"}, "user"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"max_output": 0}, "max_output"),
        ({"max_output": 1.5}, "max_output"),
    ],
)
def test_bad_arguments_fail_before_the_engine(
    sb: Sandbox, arguments: dict[str, Any], field: str
) -> None:
    before = _calls(sb)
    fields = {"command": ["cat"], **arguments}
    with pytest.raises(InvalidSpec) as raised:
        sb.spawn(**fields)
    assert raised.value.field == field
    assert _calls(sb) == before


def test_spawn_env_workdir_user_reach_the_engine(sb: Sandbox) -> None:
    proc = sb.spawn("env; pwd; id -u", env={"A": "1"}, workdir="/tmp", user="65534")
    lines = proc.wait(timeout=10).stdout.splitlines()
    assert {b"A=1", b"/tmp", b"65534"} <= set(lines)
    assert proc.argv == ("/bin/sh", "-c", "env; pwd; id -u")


def test_read_iterate_and_the_status(sb: Sandbox) -> None:
    with sb.spawn(["sh", "-c", "echo one; echo two >&2; read x; exit 4"]) as proc:
        assert proc.read(timeout=10) == ("stdout", b"one\n")
        assert proc.read(timeout=10) == ("stderr", b"two\n")
        assert proc.read(timeout=0) is None  # nothing new: it waits for stdin
        assert proc.running and proc.exit_code is None
        proc.write("go\n")
        assert list(proc) == []  # nothing more, to the end
        assert proc.read(timeout=0) == ("", b"")  # the end, every time
        result = proc.wait()
    assert (result.exit_code, result.stdout, result.stderr) == (4, b"one\n", b"two\n")
    assert (proc.exit_code, proc.running, proc.timed_out) == (4, False, False)


def test_output_read_stays_in_stdout_and_stderr() -> None:
    channel = ScriptedChannel()
    proc = Process(channel, ("cmd",), max_output=100)
    channel.send("stdout", b"a")
    channel.send("stderr", b"b")
    channel.send("stdout", b"c")
    channel.finish(ExitStatus(0))
    assert [chunk for chunk in proc] == [("stdout", b"a"), ("stderr", b"b"), ("stdout", b"c")]
    assert (proc.stdout, proc.stderr) == (b"ac", b"b")


def test_wait_timeout_raises_and_leaves_it_running() -> None:
    channel = ScriptedChannel()
    proc = Process(channel, ("server", "--secret"), max_output=100)
    channel.send("stdout", b"partial")
    with pytest.raises(ExecTimeout) as raised:
        proc.wait(timeout=0.05)
    error = raised.value
    assert isinstance(error, TimeoutError) and not error.killed
    assert "still running" in str(error) and "--secret" not in str(error)
    assert channel.signals == [] and proc.running
    assert error.stdout == b"partial"
    channel.finish(ExitStatus(0))
    assert proc.wait(timeout=10).exit_code == 0


def test_passing_the_cap_kills_and_raises_with_the_partial_result() -> None:
    channel = ScriptedChannel()
    proc = Process(channel, ("chatty",), max_output=5)
    channel.send("stdout", b"1234")
    channel.send("stderr", b"5678")
    with pytest.raises(OutputTooLarge) as raised:
        proc.wait(timeout=10)
    result = raised.value.result
    assert result is not None and result.truncated
    assert (result.stdout, result.stderr) == (b"1234", b"5")
    assert channel.closed_early  # closing the output early is how the command is killed
    assert proc.exit_code == -signal.SIGKILL and proc.truncated


def test_spawn_max_output_caps_a_real_command(sb: Sandbox) -> None:
    proc = sb.spawn(["sh", "-c", "echo 0123456789"], max_output=4)
    with pytest.raises(OutputTooLarge):
        proc.wait(timeout=10)
    assert proc.stdout == b"0123"


def test_the_spawn_timeout_kills_and_reports(sb: Sandbox) -> None:
    proc = sb.spawn(["cat"], timeout=0.2)
    result = proc.wait(timeout=10)
    assert result.timed_out and proc.timed_out
    assert result.exit_code == proc.exit_code == -signal.SIGKILL


def test_kill_sends_the_signal_and_sigkill_by_default() -> None:
    channel = ScriptedChannel()
    proc = Process(channel, ("cmd",), max_output=100)
    proc.kill(signal.SIGTERM)
    assert proc.running
    proc.kill()
    assert proc.wait(timeout=10).exit_code == 137
    assert channel.signals == [signal.SIGTERM, signal.SIGKILL]
    proc.kill()  # ended: nothing more is sent
    assert channel.signals == [signal.SIGTERM, signal.SIGKILL]


@pytest.mark.parametrize("signum", [0, -1, 1000, True, "TERM", 9.0])
def test_kill_refuses_what_is_not_a_signal(signum: Any) -> None:
    channel = ScriptedChannel()
    with Process(channel, ("cmd",), max_output=100) as proc:
        with pytest.raises(InvalidSpec) as raised:
            proc.kill(signum)
        assert raised.value.field == "signum"
        assert channel.signals == []


def test_stdin_writes_close_and_what_follows() -> None:
    channel = ScriptedChannel()
    with Process(channel, ("cmd",), max_output=100) as proc:
        proc.write(b"bytes ")
        proc.write("text")
        with pytest.raises(InvalidSpec) as raised:
            proc.write(3)  # type: ignore[arg-type]
        assert raised.value.field == "data"
        proc.close_stdin()
        assert channel.stdin_closed
        with pytest.raises(InvalidSpec):
            proc.write(b"after the end of input")
    assert channel.written == [b"bytes ", b"text"]


def test_writes_after_the_end_do_nothing() -> None:
    channel = ScriptedChannel()
    proc = Process(channel, ("cmd",), max_output=100)
    channel.finish(ExitStatus(0))
    proc.wait(timeout=10)
    proc.write(b"late")
    proc.close_stdin()
    assert channel.written == [] and not channel.stdin_closed


def test_leaving_the_block_kills_a_running_process(sb: Sandbox) -> None:
    with sb.spawn(["cat"]) as proc:
        assert proc.running
    assert not proc.running and proc.exit_code != 0


def test_closing_an_ended_process_sends_nothing() -> None:
    channel = ScriptedChannel()
    with Process(channel, ("cmd",), max_output=100) as proc:
        channel.finish(ExitStatus(3))
        proc.wait(timeout=10)
    assert channel.signals == []


def test_an_engine_failure_reaches_whoever_waits() -> None:
    channel = ScriptedChannel()
    proc = Process(channel, ("cmd",), max_output=100)
    channel.fail(sandboxer.EngineError("the engine went away"))
    with pytest.raises(sandboxer.EngineError, match="went away"):
        proc.wait(timeout=10)
    assert proc.exit_code is None and not proc.running
    assert proc.read(timeout=0) == ("", b"")


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1"])
def test_wait_and_read_check_their_timeout(timeout: Any) -> None:
    with Process(ScriptedChannel(), ("cmd",), max_output=100) as proc:
        for call in (proc.wait, proc.read):
            with pytest.raises(InvalidSpec) as raised:
                call(timeout)
            assert raised.value.field == "timeout"


def test_several_processes_at_once(sb: Sandbox) -> None:
    procs = [sb.spawn(["sh", "-c", 'read line; echo "$line"']) for _ in range(4)]
    threads = [
        threading.Thread(target=proc.write, args=(f"{n}\n",)) for n, proc in enumerate(procs)
    ]
    for thread in threads:
        thread.start()
    assert [p.wait(timeout=10).stdout for p in procs] == [b"0\n", b"1\n", b"2\n", b"3\n"]
    assert len({p.pid for p in procs}) == 4


def test_spawn_on_a_destroyed_sandbox_is_refused() -> None:
    sandbox = sandboxer.launch(backend="fake")
    sandbox.destroy()
    with pytest.raises(sandboxer.SandboxNotFound):
        sandbox.spawn(["cat"])


def test_a_backend_without_processes_says_so(sb: Sandbox) -> None:
    class Plain(FakeBackend):
        start_process = sandboxer.Backend.start_process

    sb._backend = Plain()
    with pytest.raises(sandboxer.UnsupportedFeature, match="fake cannot run"):
        sb.spawn(["cat"])
