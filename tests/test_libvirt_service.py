"""The host side of the libvirt guest's command service, against a scripted hostile guest.

The frame codec bounds every length before buffering; the connection turns anything the
protocol does not allow into an EngineError for the commands on it, never a crash or a
buffer that grows. No VM: the guest is the other end of a socketpair.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer import EngineError, InvalidSpec, SandboxSpec
from sandboxer._launch import make_plan
from sandboxer.backends.libvirt import _accounts, _domain, _service
from sandboxer.backends.libvirt import _frames as frames
from sandboxer.backends.libvirt._frames import Frame, FrameReader, Kind, ProtocolError, Start
from sandboxer.backends.libvirt._guest_scripts import SERVICE_CHANNEL
from sandboxer.images.accounts import Identity


def header(kind: int, session: int, length: int, magic: bytes = b"SB") -> bytes:
    return struct.pack(">2sBBII", magic, kind, 0, session, length)


# codec -----------------------------------------------------------------------------------
def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    stream = frames.encode(Kind.STDOUT, 7, b"hello") + frames.encode(Kind.EXIT, 7, b"\0" * 8)
    reader = FrameReader()
    got = [frame for byte in stream for frame in reader.feed(bytes([byte]))]
    assert got == [Frame(Kind.STDOUT, 7, b"hello"), Frame(Kind.EXIT, 7, b"\0" * 8)]
    assert reader.pending == 0


def test_a_truncated_frame_waits_without_yielding() -> None:
    reader = FrameReader()
    assert list(reader.feed(frames.encode(Kind.STDERR, 1, b"x" * 100)[:-1])) == []
    assert reader.pending == frames.HEADER.size + 99


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (header(Kind.STDOUT, 1, frames.DATA_MAX + 1), "at most"),
        (header(Kind.STDOUT, 1, 2**32 - 1), "at most"),
        (header(Kind.ERROR, 1, frames.ERROR_MAX + 1), "at most"),
        (header(Kind.STARTED, 1, 5), "exactly"),
        (header(Kind.EXIT, 1, 0), "exactly"),
        (header(Kind.STDOUT, 1, 1, magic=b"XX"), "magic"),
        (header(99, 1, 0), "unknown"),
        (header(Kind.START, 1, 0), "unknown"),  # a host-only frame from the guest
        (struct.pack(">2sBBII", b"SB", Kind.STDOUT, 1, 1, 0), "magic"),
    ],
)
def test_a_hostile_header_is_refused_before_its_payload_is_buffered(
    data: bytes, message: str
) -> None:
    reader = FrameReader()
    with pytest.raises(ProtocolError, match=message):
        list(reader.feed(data))


@pytest.mark.parametrize("status", [(0, 0), (255, 0), (-1, 9), (-1, 64)])
def test_exit_statuses_in_range(status: tuple[int, int]) -> None:
    assert frames.exit_status(struct.pack(">ii", *status)) == status


@pytest.mark.parametrize("status", [(256, 0), (-5, 0), (0, 65), (0, -1)])
def test_exit_statuses_out_of_range_are_refused(status: tuple[int, int]) -> None:
    with pytest.raises(ProtocolError):
        frames.exit_status(struct.pack(">ii", *status))


def test_hello_echo_is_found_after_a_previous_connections_leftovers() -> None:
    nonce = b"n" * frames.HELLO_SIZE
    junk = frames.encode(Kind.STDOUT, 3, b"old")[:-1]
    echo = frames.encode(Kind.HELLO, 0, nonce)
    data = junk + echo + b"next"
    end = frames.find_hello(data, nonce)
    assert end is not None and data[end:] == b"next"
    assert frames.find_hello(junk + frames.encode(Kind.HELLO, 0, b"m" * 16), nonce) is None


def _parse_start(payload: bytes) -> tuple[int, int, int, int, int, str, list[str], list[str]]:
    """The guest's reading of a START payload (sbx-service.c, parse_start)."""
    uid, gid, rows, cols, tty, ngroups = struct.unpack_from(">IIHHBI", payload)
    rest = payload[17 + 4 * ngroups :]
    workdir, rest = rest.split(b"\0", 1)
    lists = []
    for _ in range(2):
        (count,) = struct.unpack_from(">I", rest)
        rest = rest[4:]
        items = []
        for _ in range(count):
            item, rest = rest.split(b"\0", 1)
            items.append(item.decode())
        lists.append(items)
    assert rest == b""
    return uid, gid, rows, cols, tty, workdir.decode(), lists[0], lists[1]


def test_start_payload_carries_numbers_and_strings() -> None:
    start = Start(argv=["ls", "-l"], env={"A": "1"}, workdir="/w", uid=1000, gid=100,
                  terminal=(24, 80))  # fmt: skip
    assert _parse_start(start.payload()) == (1000, 100, 24, 80, 1, "/w", ["ls", "-l"], ["A=1"])


@pytest.mark.parametrize(
    "fields",
    [
        {"uid": 2**32 - 1},  # setresuid's "keep": it would stay root
        {"gid": -1},
        {"argv": ["a\0b"]},
        {"env": {"K": "v\0"}},
        {"workdir": "/a\0"},
        {"argv": ["x" * (frames.START_MAX + 1)]},
        {"groups": list(range(frames.MAX_GROUPS + 1))},
    ],
)
def test_start_payload_refuses_what_the_guest_would_misread(fields: dict[str, object]) -> None:
    values: dict[str, object] = {"argv": ["true"], "env": {}, "workdir": "/", "uid": 1, "gid": 1}
    values.update(fields)
    with pytest.raises(ValueError):
        Start(**values).payload()  # type: ignore[arg-type]


# connection ------------------------------------------------------------------------------
@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[_service.Connection, socket.socket]]:
    host, guest = socket.socketpair()
    lock = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT)
    connection = _service.Connection(host, lock, b"", lambda c: c.close())
    yield connection, guest
    connection.close()
    guest.close()


def _guest_reads(guest: socket.socket, kind: Kind) -> Frame:
    reader = _HostFrames()
    while True:
        for frame in reader.feed(guest.recv(65536)):
            if frame.kind is kind:
                return frame


class _HostFrames(FrameReader):
    """What the guest reads: frames of any kind (the codec's bound is for the host's side)."""

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buffer += data
        while len(self._buffer) >= 12:
            _, kind, _, session, length = frames.HEADER.unpack_from(self._buffer)
            if len(self._buffer) < 12 + length:
                return
            yield Frame(Kind(kind), session, bytes(self._buffer[12 : 12 + length]))
            del self._buffer[: 12 + length]


def _started(connection: _service.Connection, guest: socket.socket) -> _service.Session:
    session = connection.open_session()
    guest.sendall(frames.encode(Kind.STARTED, session.id, frames.u32(42)))
    payload = Start(argv=["x"], env={}, workdir="/", uid=1, gid=1).payload()
    _service.start(session, payload, "x")
    assert session.pid == 42
    return session


def test_output_streams_and_the_status_comes_back(
    pair: tuple[_service.Connection, socket.socket],
) -> None:
    connection, guest = pair
    session = _started(connection, guest)
    stream = _service.output(session, timeout=30)
    guest.sendall(frames.encode(Kind.STDOUT, session.id, b"first"))
    assert next(stream) == ("stdout", b"first")  # before the command ended
    guest.sendall(frames.encode(Kind.STDERR, session.id, b"oops"))
    guest.sendall(frames.encode(Kind.EXIT, session.id, struct.pack(">ii", -1, 15)))
    assert next(stream) == ("stderr", b"oops")
    with pytest.raises(StopIteration) as done:
        next(stream)
    assert done.value.value.exit_code == 128 + 15


def test_output_beyond_the_credit_is_a_protocol_error(
    pair: tuple[_service.Connection, socket.socket],
) -> None:
    connection, guest = pair
    session = _started(connection, guest)
    chunk = frames.encode(Kind.STDOUT, session.id, b"x" * frames.DATA_MAX)
    for _ in range(frames.WINDOW // frames.DATA_MAX + 1):  # nobody reads: no credit back
        guest.sendall(chunk)
    with connection.cond:  # until the reader took it all (the socket buffers it)
        assert connection.cond.wait_for(lambda: connection.closed, 30)
    with pytest.raises(EngineError, match="beyond its credit"):
        list(_service.output(session, timeout=30))


def test_a_malformed_frame_fails_every_command_on_the_connection(
    pair: tuple[_service.Connection, socket.socket],
) -> None:
    connection, guest = pair
    first, second = _started(connection, guest), _started(connection, guest)
    guest.sendall(header(Kind.STDOUT, first.id, 2**31))
    for session in (first, second):
        with pytest.raises(EngineError, match="at most"):
            list(_service.output(session, timeout=30))


def test_frames_for_unknown_sessions_are_dropped(
    pair: tuple[_service.Connection, socket.socket],
) -> None:
    connection, guest = pair
    session = _started(connection, guest)
    guest.sendall(frames.encode(Kind.STDOUT, 999, b"stray"))
    guest.sendall(frames.encode(Kind.EXIT, session.id, b"\0" * 8))
    assert list(_service.output(session, timeout=30)) == []


def test_a_timeout_kills_the_tree_and_reports_timed_out(
    pair: tuple[_service.Connection, socket.socket],
) -> None:
    connection, guest = pair
    session = _started(connection, guest)
    killed: list[Frame] = []

    def guest_side() -> None:  # the guest answers the kill with the command's end
        killed.append(_guest_reads(guest, Kind.SIGNAL))
        guest.sendall(frames.encode(Kind.EXIT, session.id, struct.pack(">ii", -1, 9)))

    answering = threading.Thread(target=guest_side)
    answering.start()
    with pytest.raises(StopIteration) as done:
        next(_service.output(session, timeout=0.01))
    answering.join()
    assert killed[0].payload == frames.u32(signal.SIGKILL)
    assert done.value.value.timed_out


def test_stdin_waits_for_credit(pair: tuple[_service.Connection, socket.socket]) -> None:
    connection, guest = pair
    session = _started(connection, guest)
    session.stdin_credit = 3
    _service.write(session, b"abc")
    assert _guest_reads(guest, Kind.STDIN).payload == b"abc"
    assert session.stdin_credit == 0
    credit = frames.u32(frames.WINDOW + 1)  # more than was ever taken
    guest.sendall(frames.encode(Kind.STDIN_CREDIT, session.id, credit))
    with pytest.raises(EngineError, match="more stdin credit"):
        list(_service.output(session, timeout=30))


# domain ----------------------------------------------------------------------------------
def test_the_service_ports_are_in_the_domain_of_sandboxers_own_guest_only() -> None:
    plan = make_plan(SandboxSpec(backend="libvirt"))
    boot = _domain.Boot("/img/vmlinuz", "/run/x/initrd.img")
    for with_boot, expected in ((boot, _domain.SERVICE_PORTS), (None, 0)):
        xml = _domain.domain_xml(plan, accel="qemu", console_log="/c.log", boot=with_boot)
        names = [
            target.get("name", "")
            for target in ET.fromstring(xml).iterfind("devices/channel/target")
        ]
        service = [name for name in names if name.startswith(SERVICE_CHANNEL)]
        assert len(service) == expected, names


# users -----------------------------------------------------------------------------------
def test_users_resolve_on_the_host_to_numbers(tmp_path: Path) -> None:
    accounts = _accounts.Accounts.builtin("sandbox")
    accounts.save(tmp_path)
    loaded = _accounts.Accounts.load(tmp_path)
    assert loaded == accounts
    assert loaded.identity(None) == Identity(1000, 1000, "/home/sandbox")
    assert loaded.identity("1234") == Identity(1234, 1234, None)
    assert loaded.identity("sandbox:0") == Identity(1000, 0, "/home/sandbox")
    assert _accounts.Accounts.builtin(None).identity(None) == Identity(0, 0, "/")
    with pytest.raises(InvalidSpec):
        loaded.identity("nosuchuser")


def test_a_numeric_user_is_a_uid_even_if_the_image_names_root_so() -> None:
    hostile = _accounts.Accounts("", "1000:x:0:0:root:/root:/bin/sh\n", "")
    assert hostile.identity("1000").uid == 1000


def test_a_garbled_account_snapshot_is_an_engine_error(tmp_path: Path) -> None:
    (tmp_path / _accounts.ACCOUNTS_FILE).write_text("[1]")
    with pytest.raises(EngineError):
        _accounts.Accounts.load(tmp_path)
