"""The host side of the guest's command service: connections, sessions, streams.

The guest's sbx-service listens on virtio-serial ports of its own
(`org.sandboxer.exec.N`), whose host ends are unix sockets libvirt makes. One process of
ours holds at most one connection per sandbox, taken under an exclusive lock on the
port, so other processes use the other ports; sessions (one per command) are
multiplexed over it, and it closes when its last session ends (the guest then kills
whatever is left of that connection's commands). A reader thread demultiplexes frames;
everything it takes is bounded by the credit it gave (see `_frames`).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sandboxer.backend import (
    EngineError,
    ExecGenerator,
    ExitStatus,
    ProcessChannel,
    TerminalSize,
    logger,
)

from . import _frames as frames
from ._frames import Frame, FrameReader, Kind, ProtocolError

HELLO_SECONDS = 30.0  # the service may still be starting when the VM's agent answers
HELLO_RESEND = 1.0
HELLO_SCAN_MAX = 1024 * 1024  # bytes a previous connection may have left before our HELLO
BUSY_SECONDS = 60.0  # waiting for a port another process holds
KILL_GRACE = 10.0
CREDIT_BATCH = frames.WINDOW // 4
RECV_SIZE = 64 * 1024


class Session:
    """One command on a connection: what the guest sent for it, kept until read."""

    def __init__(self, connection: Connection, session_id: int) -> None:
        self.connection = connection
        self.id = session_id
        self.pid: int | None = None
        self.events: collections.deque[tuple[str, bytes]] = collections.deque()
        self.buffered = 0  # output bytes held here (at most the credit we gave)
        self.unacknowledged = 0  # output read by the caller, not yet given back as credit
        self.stdin_credit = frames.WINDOW
        self.exit: tuple[int, int] | None = None
        self.error: str | None = None
        self.started = threading.Event()

    @property
    def done(self) -> bool:
        return self.exit is not None or self.error is not None


class Connection:
    """One socket to one port of the guest's service, and its reader thread."""

    def __init__(self, sock: socket.socket, lock_fd: int, leftover: bytes,
                 on_idle: Callable[[Connection], None]) -> None:  # fmt: skip
        self._sock = sock
        self._lock_fd = lock_fd
        self._on_idle = on_idle
        self._send_lock = threading.Lock()
        self.cond = threading.Condition()
        self.sessions: dict[int, Session] = {}
        self._next_id = 1
        self.closed = False
        self.failure: str | None = None
        self._reader = FrameReader()
        self._thread = threading.Thread(
            target=self._read_loop, args=(leftover,), name="sbx-service-reader", daemon=True
        )
        self._thread.start()

    # sending ---------------------------------------------------------------------------
    def send(self, kind: Kind, session: int, payload: bytes = b"") -> None:
        data = frames.encode(kind, session, payload)
        with self._send_lock:
            if self.closed:
                raise EngineError(self.failure or "the connection to the guest's service closed")
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise EngineError(f"the guest's command service went away: {exc}") from exc

    def open_session(self) -> Session:
        with self.cond:
            if self.closed:
                raise EngineError(self.failure or "the connection to the guest's service closed")
            session = Session(self, self._next_id)
            self._next_id += 1
            self.sessions[session.id] = session
            return session

    def forget(self, session: Session) -> None:
        """The caller is done with `session`; the last one closes the connection."""
        with self.cond:
            self.sessions.pop(session.id, None)
            idle = not self.sessions
        if idle:
            self._on_idle(self)

    def close(self, failure: str | None = None) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.failure = failure
            for session in self.sessions.values():
                if not session.done:
                    session.error = failure or "the connection to the guest's service closed"
                session.started.set()
            self.cond.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        os.close(self._lock_fd)  # releases the port for other processes

    # receiving -------------------------------------------------------------------------
    def _read_loop(self, leftover: bytes) -> None:
        data = leftover
        try:
            while True:
                for frame in self._reader.feed(data):
                    self._dispatch(frame)
                data = self._sock.recv(RECV_SIZE)
                if not data:
                    raise EngineError("the guest's command service closed the connection")
        except (OSError, EngineError) as exc:
            if not self.closed:
                logger.debug("guest command service connection ends: %s", exc)
            self.close(str(exc) if isinstance(exc, EngineError) else f"guest connection: {exc}")

    def _dispatch(self, frame: Frame) -> None:
        with self.cond:
            session = self.sessions.get(frame.session)
            if session is None or session.done:
                return  # a command we stopped following (closed early): its late frames
            if frame.kind in (Kind.STDOUT, Kind.STDERR):
                session.buffered += len(frame.payload)
                if session.buffered > frames.WINDOW:
                    raise ProtocolError("the guest's command service sent output beyond its credit")
                stream = "stdout" if frame.kind is Kind.STDOUT else "stderr"
                session.events.append((stream, frame.payload))
            elif frame.kind is Kind.STARTED:
                session.pid = int.from_bytes(frame.payload, "big")
                session.started.set()
            elif frame.kind is Kind.EXIT:
                session.exit = frames.exit_status(frame.payload)
                session.started.set()
            elif frame.kind is Kind.ERROR:
                message = frame.payload.decode("utf-8", "replace")
                session.error = "".join(c if c.isprintable() else "?" for c in message)
                session.started.set()
            elif frame.kind is Kind.STDIN_CREDIT:
                session.stdin_credit += int.from_bytes(frame.payload, "big")
                if session.stdin_credit > frames.WINDOW:
                    raise ProtocolError(
                        "the guest's command service gave back more stdin credit than it had"
                    )
            else:
                raise ProtocolError(f"the guest's command service sent {frame.kind.name} unasked")
            self.cond.notify_all()


def _handshake(sock: socket.socket, deadline: float) -> bytes:
    """HELLO with a fresh nonce until an echo comes back; what follows the echo.

    HELLO goes again every second: a guest that took it for the last host's leftovers
    (see sbx-service.c, port_hup) answers the next one."""
    nonces: list[bytes] = []
    received, resend = b"", 0.0
    while True:
        if time.monotonic() >= resend:
            nonces.append(secrets.token_bytes(frames.HELLO_SIZE))
            sock.sendall(frames.encode(Kind.HELLO, 0, nonces[-1]))
            resend = time.monotonic() + HELLO_RESEND
        ends = [end for end in (frames.find_hello(received, n) for n in nonces) if end is not None]
        if ends:
            return received[min(ends) :]
        if len(received) > HELLO_SCAN_MAX:
            raise ProtocolError("the guest's command service never answered our HELLO")
        now = time.monotonic()
        if now >= deadline:
            raise EngineError(
                f"the guest's command service did not answer within {HELLO_SECONDS:.0f} s"
            )
        sock.settimeout(max(0.001, min(deadline, resend) - now))
        try:
            chunk = sock.recv(RECV_SIZE)
        except TimeoutError:
            continue
        if not chunk:
            raise EngineError("the guest's command service channel closed")
        received += chunk


class ServicePool:
    """This process's connections, one per sandbox at most (keyed by the domain's UUID)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[str, Connection] = {}

    def session(self, key: str, sockets: Callable[[], list[str]], run: Path) -> Session:
        with self._lock:
            connection = self._connections.get(key)
            if connection is None or connection.closed:
                connection = self._connect(key, sockets, run)
                self._connections[key] = connection
            return connection.open_session()

    def _connect(self, key: str, sockets: Callable[[], list[str]], run: Path) -> Connection:
        deadline = time.monotonic() + BUSY_SECONDS
        paths = sockets()
        while True:
            for index, path in enumerate(paths):
                lock_fd = _try_lock(run / f"service-{index}.lock")
                if lock_fd is None:
                    continue
                try:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                    try:
                        sock.settimeout(HELLO_SECONDS)
                        sock.connect(path)
                        leftover = _handshake(sock, time.monotonic() + HELLO_SECONDS)
                        sock.settimeout(None)
                    except BaseException:
                        sock.close()
                        raise
                except OSError as exc:
                    os.close(lock_fd)
                    raise EngineError(f"cannot reach the guest's command service: {exc}") from exc
                except BaseException:
                    os.close(lock_fd)
                    raise
                return Connection(sock, lock_fd, leftover, lambda c: self._idle(key, c))
            if time.monotonic() > deadline:
                raise EngineError(
                    f"every command channel of the sandbox stayed busy for {BUSY_SECONDS:.0f} s "
                    f"({len(paths)} processes use it)"
                )
            time.sleep(0.05)

    def _idle(self, key: str, connection: Connection) -> None:
        with self._lock:
            with connection.cond:
                if connection.sessions:
                    return  # a session arrived meanwhile
            if self._connections.get(key) is connection:
                del self._connections[key]
        connection.close()


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ---- one command ------------------------------------------------------------------------


def start(session: Session, payload: bytes, name: str) -> None:
    """Send START (`Start.payload`) and wait for STARTED (or the error that replaced it)."""
    connection = session.connection
    try:
        connection.send(Kind.START, session.id, payload)
        with connection.cond:
            connection.cond.wait_for(lambda: session.started.is_set(), HELLO_SECONDS)
        if not session.started.is_set():
            raise EngineError(f"the guest's command service did not start {name!r}")
        if session.error is not None and session.exit is None and session.pid is None:
            raise EngineError(f"the guest could not start {name!r}: {session.error}")
    except BaseException:
        connection.forget(session)
        raise


def write(session: Session, data: bytes) -> None:
    """Stdin within the credit the guest gave: waits while the command is not reading."""
    connection = session.connection
    view = memoryview(data)
    while view:
        with connection.cond:
            connection.cond.wait_for(lambda: session.stdin_credit > 0 or session.done)
            if session.done:
                return
            size = min(len(view), frames.DATA_MAX, session.stdin_credit)
            session.stdin_credit -= size
        with contextlib.suppress(EngineError):  # gone meanwhile: the output says why
            connection.send(Kind.STDIN, session.id, bytes(view[:size]))
        view = view[size:]


def control(session: Session, kind: Kind, payload: bytes = b"") -> None:
    """STDIN_CLOSE, SIGNAL or RESIZE, unless the command already ended."""
    if session.done:
        return
    with contextlib.suppress(EngineError):
        session.connection.send(kind, session.id, payload)


def kill(session: Session) -> None:
    control(session, Kind.SIGNAL, frames.u32(signal.SIGKILL))


def _next(session: Session, deadline: float | None) -> tuple[str, bytes] | None:
    """The next chunk, or None once the command ended or the deadline passed."""
    connection = session.connection
    with connection.cond:
        while not session.events and not session.done:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            connection.cond.wait(remaining)
        if not session.events:
            return None
        stream, chunk = session.events.popleft()
        session.buffered -= len(chunk)
        session.unacknowledged += len(chunk)
        credit = session.unacknowledged if session.unacknowledged >= CREDIT_BATCH else 0
        session.unacknowledged -= credit
    if credit:
        control(session, Kind.CREDIT, frames.u32(credit))
    return stream, chunk


def _status(session: Session, timed_out: bool) -> ExitStatus:
    if timed_out:
        return ExitStatus(exit_code=-1, timed_out=True)
    if session.exit is None:
        raise EngineError(f"the command ended without a status: {session.error}")
    code, signum = session.exit
    return ExitStatus(exit_code=128 + signum if signum else code)


def output(session: Session, timeout: float | None) -> ExecGenerator:
    """The command's output as it comes; past `timeout` its whole tree is killed. Closing
    this early kills the tree too."""
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            item = _next(session, deadline)
            if item is not None:
                yield item
                continue
            if session.done:
                return _status(session, timed_out)
            if timed_out:
                raise EngineError(f"a command survived SIGKILL for {KILL_GRACE:.0f} s")
            kill(session)
            timed_out, deadline = True, time.monotonic() + KILL_GRACE
    finally:
        if not session.done:
            kill(session)
        session.connection.forget(session)


class ServiceProcess(ProcessChannel):
    def __init__(self, session: Session, timeout: float | None, terminal: bool) -> None:
        self._session = session
        self._terminal = terminal
        self.pid = session.pid
        self.output = output(session, timeout)

    def write(self, data: bytes) -> None:
        write(self._session, data)

    def close_stdin(self) -> None:
        if not self._terminal:
            control(self._session, Kind.STDIN_CLOSE)

    def signal(self, signum: int) -> None:
        control(self._session, Kind.SIGNAL, frames.u32(signum))

    def resize(self, size: TerminalSize) -> None:
        if self._terminal:
            control(self._session, Kind.RESIZE, frames.u16_pair(size.rows, size.cols))


def feed(session: Session, data: bytes | None) -> None:
    """An exec's whole stdin, then its end, from a thread of its own: the command may
    write more output than the window before it reads."""

    def run() -> None:
        if data:
            write(session, data)
        control(session, Kind.STDIN_CLOSE)

    if not data:
        control(session, Kind.STDIN_CLOSE)
        return
    threading.Thread(target=run, name="sbx-service-stdin", daemon=True).start()
