"""Attacks on this session's surfaces (processes, terminals, file calls, readiness,
stop/start pins), played as a hostile sandbox or a careless caller on the fake engine
and on plain host objects. Each test tries the forbidden thing and shows it fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import tracemalloc

import pytest

import sandboxer
from sandboxer import OutputTooLarge, Process, Pty
from sandboxer._backend import ExecGenerator, ExitStatus, ProcessChannel, TerminalSize
from sandboxer._errors import EngineError
from sandboxer._labels import PINS
from sandboxer._pinned import pinned_again
from sandboxer._proctree import exec_pid, pid_namespace, signal_process
from sandboxer._pty import PTY_KEPT
from sandboxer._readiness import listening_in
from sandboxer._vocabulary import Protocol
from sandboxer.aio import AsyncPty
from sandboxer.testing import FakeBackend


class _Flood(ProcessChannel):
    """What a sandbox sends when it writes one byte per write(): one engine frame each
    (Docker frames every write, Incus sends a websocket message per read)."""

    def __init__(self, count: int, *, alternate: bool, gate: threading.Event | None = None) -> None:
        self.pid = None
        self.signals: list[int] = []
        self.output = self._output(count, alternate, gate)

    @staticmethod
    def _output(count: int, alternate: bool, gate: threading.Event | None) -> ExecGenerator:
        if gate is not None:
            gate.wait()
        for index in range(count):
            yield ("stderr" if alternate and index % 2 else "stdout"), b"x"
        return ExitStatus(0)

    def write(self, data: bytes) -> None:
        pass

    def close_stdin(self) -> None:
        pass

    def signal(self, signum: int) -> None:
        self.signals.append(signum)

    def resize(self, size: TerminalSize) -> None:
        pass


def _kept_after(make: object) -> int:
    """Bytes still allocated once `make()` returned (what the object it made holds)."""
    tracemalloc.start()
    try:
        held = make()  # type: ignore[operator]
        kept = tracemalloc.get_traced_memory()[0]
        del held
    finally:
        tracemalloc.stop()
    return kept


# --- hostile output -------------------------------------------------------------------
_FLOOD = 1 << 18  # 256 KiB of output, one byte per frame


@pytest.mark.parametrize("alternate", [False, True], ids=["one-stream", "alternating"])
def test_byte_by_byte_output_costs_the_host_no_more_than_a_few_caps(alternate: bool) -> None:
    """A cap on the bytes a process keeps must bound the host memory it takes: one-byte
    frames kept as one (stream, bytes) tuple each cost ~100 bytes per byte of output,
    so the default 64 MiB cap would let a sandbox take ~6 GiB."""

    def run() -> Process:
        proc = Process(_Flood(_FLOOD, alternate=alternate), ("flood",), max_output=_FLOOD)
        with contextlib.suppress(OutputTooLarge):  # killed at the cap: what it kept counts
            proc.wait(timeout=120)
        return proc

    assert _kept_after(run) < 3 * _FLOOD + (64 << 10)


def test_byte_by_byte_output_on_one_stream_is_kept_whole_and_in_order() -> None:
    proc = Process(_Flood(5000, alternate=False), ("flood",), max_output=5000)
    assert proc.wait(timeout=60).stdout == b"x" * 5000
    assert b"".join(chunk for _, chunk in proc) == b"x" * 5000


def test_alternating_output_is_handed_out_in_order() -> None:
    proc = Process(_Flood(3000, alternate=True), ("flood",), max_output=1 << 20)
    result = proc.wait(timeout=60)
    assert (len(result.stdout), len(result.stderr)) == (1500, 1500)
    streams = [stream for stream, _ in proc]
    assert streams == ["stdout", "stderr"] * 1500


def test_a_terminal_flooded_byte_by_byte_keeps_a_mebibyte() -> None:
    terminal = Pty(_Flood(PTY_KEPT + 4096, alternate=False), ("flood",))
    terminal.wait(timeout=120)
    assert len(terminal.read(timeout=0, max_bytes=2 * PTY_KEPT) or b"") == PTY_KEPT


def test_an_async_terminal_flooded_while_its_loop_is_busy_stays_bounded() -> None:
    """An asyncio caller whose loop is busy for a while (a blocking call) must not pay
    for each frame the sandbox sent meanwhile: a terminal keeps 1 MiB, but every frame
    schedules a wake-up (`call_soon_threadsafe`) that waits in the loop's queue, ~200
    bytes each, without bound. Fix (sandboxer/aio.py `_Changes._wake`): schedule a
    wake-up only when none is pending (a flag the scheduled callback clears before it
    sets the event)."""
    frames = 200_000
    gate = threading.Event()

    async def busy_caller() -> int:
        terminal = Pty(_Flood(frames, alternate=False, gate=gate), ("flood",))
        AsyncPty(terminal)
        tracemalloc.start()
        try:
            gate.set()
            terminal.wait(timeout=120)  # blocks the loop while the frames arrive
            return tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    assert asyncio.run(busy_caller()) < 4 * PTY_KEPT


# --- signals and pids -----------------------------------------------------------------
def test_a_signal_for_a_host_pid_never_reaches_it() -> None:
    """A pid a sandbox (or a confused engine) names that is the host's own, with the
    host's init standing for the sandbox's: nothing is signalled."""
    with subprocess.Popen(["sleep", "60"]) as victim:
        try:
            assert not signal_process(victim.pid, victim.pid, signal.SIGTERM)
            assert not signal_process(victim.pid, 1, signal.SIGTERM)
            assert not signal_process(victim.pid, os.getpid(), signal.SIGKILL)
            assert victim.poll() is None
        finally:
            victim.kill()


def test_a_gone_init_pid_finds_no_process_to_report() -> None:
    with subprocess.Popen(["true"]) as gone:
        gone.wait()
    assert pid_namespace(gone.pid) is None or gone.pid == os.getpid()
    assert exec_pid("0" * 32, gone.pid) is None
    assert exec_pid("0" * 32, os.getpid()) is None  # the host's namespace is no sandbox's


# --- /proc/net tables -----------------------------------------------------------------
@pytest.mark.parametrize(
    "table",
    [
        b"sl local rem st\n0: 00000000:1F90 00000000:0000 0A\n"[:0],  # empty
        b"header\n" + b"0: 0:1F90 0:0 0A " * 100_000,  # one huge line
        b"header\n0: 00000000:1F90\n",  # too few fields
        b"header\n0: :1F90: 0:0 0A\n",  # colons where none belong
        b"header\n0: 00000000:1f90 00000000:0000 0a\n",  # lower case state
        b"\xff\xfe\n0: \xff:1F90 0:0 0A\n",  # no text
    ],
)
def test_forged_net_tables_never_raise(table: bytes) -> None:
    listening_in(table, 8080, Protocol.TCP)


def test_a_listener_past_the_tables_bound_is_not_seen() -> None:
    """What a hostile `cat` prints is read only up to its bound (4 MiB)."""
    padding = b"header\n" + (b"0: 00000000:0001 00000000:0000 01\n" * 150_000)
    assert len(padding) > 4 << 20
    assert not listening_in(padding + b"0: 00000000:1F90 00000000:0000 0A\n", 8080, Protocol.TCP)


# --- stop/start pins ------------------------------------------------------------------
@pytest.mark.parametrize(
    "label",
    [
        '[["/run/sandboxer/pinned/../../../etc/x/0", "/etc", 1, 2]]',
        '[["/run/sandboxer/pinned/' + "a" * 32 + '/0/../../x", "/etc", 1, 2]]',
        '[["/tmp/x", "/etc", 1, 2]]',
        '[["/run/sandboxer/pinned/' + "a" * 32 + '/0\\n", "/etc", 1, 2]]',
        '[["/run/sandboxer/pinned/' + "A" * 32 + '/0", "/etc", 1, 2]]',
    ],
)
def test_a_pins_label_naming_any_other_host_path_binds_nothing(label: str) -> None:
    """An attached sandbox's labels are whatever its creator wrote: a PINS label may only
    name a private pin path of ours, never a place elsewhere on the host."""
    with pytest.raises(EngineError, match="not a pin of ours"), pinned_again({PINS: label}):
        pass


# --- careless callers -----------------------------------------------------------------
def test_waits_and_spawns_name_the_program_not_its_secret_arguments() -> None:
    with sandboxer.launch(backend="fake") as sb:
        with pytest.raises(sandboxer.NotReady) as raised:
            sb.wait_for(["sh", "-c", "exit 1", "token=hunter2"], timeout=0.3, interval=0.1)
        # (The fake engine's logs, which the message ends with, list its calls whole.)
        assert "hunter2" not in raised.value.awaited and "'sh'" in raised.value.awaited
        with sb.spawn(["sh", "-c", "sleep 30", "token=hunter2"]) as proc:
            with pytest.raises(sandboxer.ExecTimeout) as timed_out:
                proc.wait(timeout=0.1)
            assert "hunter2" not in str(timed_out.value) and "hunter2" not in repr(proc)


@pytest.mark.parametrize("path", ["/", "//", "/.", "/tmp/..", "/../..", "relative", "/a\0b"])
def test_remove_refuses_the_root_and_what_is_no_path_before_the_engine(path: str) -> None:
    with sandboxer.launch(backend="fake") as sb:
        before = len(FakeBackend.sandboxes[sb.name].calls)
        with pytest.raises(sandboxer.InvalidSpec) as raised:
            sb.remove(path, recursive=True)
        assert raised.value.field == "path"
        assert len(FakeBackend.sandboxes[sb.name].calls) == before
