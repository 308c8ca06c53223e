"""The contract of `spawn` and `pty` on one running sandbox (mixed into
`SharedSandboxContract`): output streams while the command runs, stdin stays open,
kills reach everything a command started, and a process or terminal runs as the
profile's user under the same enforcement as exec."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

import sandboxer
from sandboxer import Process, Pty, Sandbox

# How long a test waits for something that should come at once: a bound, so a broken
# backend fails the test instead of hanging it (no test measures time).
PATIENCE = 60.0
# A command whose grandchild (a sleep) runs in the background; it prints that pid.
GRANDCHILD = ["sh", "-c", "(sleep 600 & echo $!; wait) & wait"]


def read_until(process: Process, wanted: bytes) -> bytes:
    """What `process` printed on stdout up to and including `wanted`."""
    deadline = time.monotonic() + PATIENCE
    seen = b""
    while wanted not in seen:
        chunk = process.read(timeout=max(0.0, deadline - time.monotonic()))
        assert chunk is not None, f"no {wanted!r} within {PATIENCE}s; got {seen!r}"
        assert chunk[1], f"the output ended without {wanted!r}; got {seen!r}"
        if chunk[0] == "stdout":
            seen += chunk[1]
    return seen


def type_until(terminal: Pty, wanted: bytes) -> bytes:
    """What `terminal` showed up to and including `wanted`."""
    deadline = time.monotonic() + PATIENCE
    seen = b""
    while wanted not in seen:
        data = terminal.read(timeout=max(0.0, deadline - time.monotonic()))
        assert data is not None, f"no {wanted!r} within {PATIENCE}s; got {seen!r}"
        assert data, f"the terminal ended without {wanted!r}; got {seen!r}"
        seen += data
    return seen


def alive(sandbox: Sandbox, pid: int) -> bool:
    """Whether `pid` is a live process in the sandbox (a zombie is not)."""
    status = sandbox.exec(["cat", f"/proc/{pid}/status"])
    return status.exit_code == 0 and b"zombie" not in status.stdout


def eventually(check: Callable[[], bool]) -> bool:
    """Whether `check` holds within PATIENCE (a SIGKILLed process takes a moment to go)."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class ProcessContract:
    """`spawn` and `pty`, on the class's shared sandbox."""

    # spawn ---------------------------------------------------------------------------
    def test_spawn_streams_while_it_runs(self, shared: Sandbox) -> None:
        script = 'echo warn >&2; echo ready; read line; echo "got $line"; cat; exit 3'
        with shared.spawn(["sh", "-c", script]) as proc:
            read_until(proc, b"ready\n")  # before it ends: it waits for stdin
            assert proc.running and proc.exit_code is None
            proc.write(b"hello\n")
            read_until(proc, b"got hello\n")
            proc.write("more\n")
            proc.close_stdin()  # cat sees EOF
            result = proc.wait(timeout=PATIENCE)
        assert result.exit_code == 3
        assert proc.exit_code == 3 and not proc.running
        assert result.stdout == b"ready\ngot hello\nmore\n"
        assert result.stderr == b"warn\n"

    def test_several_processes_at_once(self, shared: Sandbox) -> None:
        procs = [shared.spawn(["sh", "-c", 'read line; echo "$line"']) for _ in range(3)]
        for number, proc in reversed(list(enumerate(procs))):
            proc.write(f"line {number}\n")
        results = [proc.wait(timeout=PATIENCE) for proc in procs]
        assert [r.stdout for r in results] == [b"line 0\n", b"line 1\n", b"line 2\n"]
        assert len({proc.pid for proc in procs}) == 3

    def test_wait_timeout_leaves_it_running(self, shared: Sandbox) -> None:
        with shared.spawn(["cat"]) as proc:
            with pytest.raises(sandboxer.ExecTimeout) as raised:
                proc.wait(timeout=0.5)
            assert isinstance(raised.value, TimeoutError) and not raised.value.killed
            assert proc.running and proc.exit_code is None
            proc.write(b"still here\n")
            proc.close_stdin()
            result = proc.wait(timeout=PATIENCE)
        assert (result.exit_code, result.stdout) == (0, b"still here\n")

    def test_pid_is_the_sandbox_pid(self, shared: Sandbox) -> None:
        with shared.spawn(["sh", "-c", "echo $$; cat"]) as proc:
            printed = int(read_until(proc, b"\n"))
            assert proc.pid == printed
            assert alive(shared, printed)
            proc.close_stdin()
            assert proc.wait(timeout=PATIENCE).exit_code == 0

    @pytest.mark.parametrize("ended_by", ["kill", "timeout"])
    def test_kill_and_timeout_reach_a_grandchild(self, shared: Sandbox, ended_by: str) -> None:
        timeout = 3 if ended_by == "timeout" else None
        with shared.spawn(GRANDCHILD, timeout=timeout) as proc:
            grandchild = int(read_until(proc, b"\n"))
            assert alive(shared, grandchild)
            if ended_by == "kill":
                proc.kill()
            result = proc.wait(timeout=PATIENCE)
        assert result.exit_code != 0
        assert result.timed_out is (ended_by == "timeout")
        assert eventually(lambda: not alive(shared, grandchild))

    # SIGINT too: a command must not inherit an ignored SIGINT from the engine's agent.
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_kill_with_another_signal(self, shared: Sandbox, signum: int) -> None:
        with shared.spawn(["sleep", "600"]) as proc:
            read = proc.read(timeout=0)
            assert read is None  # nothing printed, still running
            proc.kill(signum)
            assert proc.wait(timeout=PATIENCE).exit_code not in (0, None)

    # pty -----------------------------------------------------------------------------
    def test_pty_is_a_terminal_that_echoes_and_resizes(self, shared: Sandbox) -> None:
        with shared.pty(size=(24, 80)) as terminal:
            terminal.write(b"tty; stty size\n")
            shown = type_until(terminal, b"24 80")
            assert b"tty; stty size" in shown  # the terminal echoed what was typed
            assert b"/dev/pts/" in shown
            terminal.resize(30, 100)
            terminal.write("stty size\n")
            type_until(terminal, b"30 100")
            terminal.write(b"exit 5\n")
            assert terminal.wait(timeout=PATIENCE) == 5
        assert terminal.exit_code == 5 and not terminal.running

    def test_pty_passes_any_key_on(self, shared: Sandbox) -> None:
        # ctrl-p ctrl-q are Docker's default detach keys: they must not end the session.
        with shared.pty(["cat"]) as terminal:
            terminal.write(b"\x10\x11\x10\x11 still here\n")
            shown = type_until(terminal, b" still here\r\n")  # the terminal's echo
            if shown.count(b" still here\r\n") < 2:
                shown += type_until(terminal, b" still here\r\n")  # what cat printed
            assert terminal.running
        assert terminal.exit_code is not None

    def test_pty_command_and_its_exit_code(self, shared: Sandbox) -> None:
        with shared.pty(["sh", "-c", "echo on the terminal >&2; exit 7"]) as terminal:
            assert terminal.wait(timeout=PATIENCE) == 7
            shown = b""
            while data := terminal.read(timeout=PATIENCE):
                shown += data
        assert b"on the terminal\r\n" in shown  # stderr too, with a terminal's newlines

    # the profile holds for them too -------------------------------------------------
    def test_processes_run_as_the_profile_user_without_capabilities(self, shared: Sandbox) -> None:
        probe = "id -u; grep CapEff /proc/self/status"
        expected = shared.exec(["id", "-u"]).stdout.strip()
        with shared.spawn(["sh", "-c", probe]) as proc:
            spawned = proc.wait(timeout=PATIENCE).stdout.split()
        with shared.pty(["sh", "-c", probe]) as terminal:
            terminal.wait(timeout=PATIENCE)
            shown = b""
            while data := terminal.read(timeout=PATIENCE):
                shown += data
        for words in (spawned, shown.split()):
            assert words[0] == expected != b"0"  # hardened: the profile's non-root user
            assert words[1:] == [b"CapEff:", b"0000000000000000"]
