"""The frames spoken with the guest's command service (guest-service/sbx-service.c).

A frame is a 12-byte header — magic "SB", type, a zero byte, the session id and the
payload's length (both u32, big-endian) — and the payload. Every length is bounded by
its type on both sides: the guest is hostile, so a frame the host cannot accept
(unknown type, wrong magic, oversize, malformed payload) is a `ProtocolError`, never a
buffer that grows.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Mapping, Sequence

import attrs

from sandboxer.backend import EngineError

MAGIC = b"SB"
HEADER = struct.Struct(">2sBBII")
HELLO_SIZE = 16
START_MAX = 256 * 1024  # argv, environment and working directory of one command
DATA_MAX = 16 * 1024  # one stdout/stderr/stdin chunk
ERROR_MAX = 4096
WINDOW = 256 * 1024  # credit per session and direction (the guest's is the same)
MAX_GROUPS = 64
NO_ID = 2**32 - 1  # (uid_t)-1: "keep the current id" to setresuid, which would keep root


class Kind(enum.IntEnum):
    # host -> guest
    HELLO = 1
    START = 2
    STDIN = 3
    STDIN_CLOSE = 4
    SIGNAL = 5
    RESIZE = 6
    CREDIT = 7
    # guest -> host (and HELLO, echoed)
    STARTED = 16
    STDOUT = 17
    STDERR = 18
    EXIT = 19
    ERROR = 20
    STDIN_CREDIT = 21


# What the guest may send, and the exact or largest payload of each.
_FROM_GUEST: dict[int, tuple[int, bool]] = {  # kind -> (size, exact)
    Kind.HELLO: (HELLO_SIZE, True),
    Kind.STARTED: (4, True),
    Kind.STDOUT: (DATA_MAX, False),
    Kind.STDERR: (DATA_MAX, False),
    Kind.EXIT: (8, True),
    Kind.ERROR: (ERROR_MAX, False),
    Kind.STDIN_CREDIT: (4, True),
}


class ProtocolError(EngineError):
    """The guest's service sent something the protocol does not allow."""


@attrs.frozen
class Frame:
    kind: Kind
    session: int
    payload: bytes


def encode(kind: Kind, session: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, kind, 0, session, len(payload)) + payload


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def u16_pair(first: int, second: int) -> bytes:
    """A terminal size (rows, cols), each clamped to what the kernel's winsize holds."""
    return struct.pack(">HH", min(max(first, 0), 0xFFFF), min(max(second, 0), 0xFFFF))


@attrs.frozen(kw_only=True)
class Start:
    """One command: numeric ids only (the host resolved any name), argv, env, workdir."""

    argv: Sequence[str]
    env: Mapping[str, str]
    workdir: str
    uid: int
    gid: int
    groups: Sequence[int] = ()
    terminal: tuple[int, int] | None = None  # rows, cols

    def payload(self) -> bytes:
        """The START payload; ValueError naming what does not fit."""
        for name, value in (
            ("uid", self.uid),
            ("gid", self.gid),
            *(("group", g) for g in self.groups),
        ):
            if not 0 <= value < NO_ID:
                raise ValueError(f"{name} {value} is not an id from 0 to {NO_ID - 1}")
        if len(self.groups) > MAX_GROUPS:
            raise ValueError(f"more than {MAX_GROUPS} groups")
        size = u16_pair(*(self.terminal or (0, 0)))
        head = (
            struct.pack(">II", self.uid, self.gid)
            + size
            + struct.pack(">BI", self.terminal is not None, len(self.groups))
        )
        env = [f"{key}={value}" for key, value in self.env.items()]
        parts = [head, *(u32(g) for g in self.groups), _string(self.workdir, "workdir")]
        for what, items in (("argv", list(self.argv)), ("env", env)):
            parts.append(u32(len(items)))
            parts.extend(_string(item, what) for item in items)
        payload = b"".join(parts)
        if len(payload) > START_MAX:
            raise ValueError(f"argv and env take {len(payload)} bytes, more than {START_MAX}")
        return payload


def _string(text: str, what: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise ValueError(f"{what} holds a NUL byte")
    return data + b"\0"


class FrameReader:
    """Bytes from the guest in, whole frames out; at most one frame is ever buffered."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            magic, kind, zero, session, length = HEADER.unpack_from(self._buffer)
            if magic != MAGIC or zero != 0:
                raise ProtocolError("the guest's command service sent a frame without its magic")
            if kind not in _FROM_GUEST:
                raise ProtocolError(f"the guest's command service sent an unknown frame ({kind})")
            size, exact = _FROM_GUEST[kind]
            if length > size or (exact and length != size):
                raise ProtocolError(
                    f"the guest's command service sent a {Kind(kind).name} frame of {length} "
                    f"bytes (allowed: {'exactly ' if exact else 'at most '}{size})"
                )
            end = HEADER.size + length
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            yield Frame(Kind(kind), session, payload)

    @property
    def pending(self) -> int:
        return len(self._buffer)


def find_hello(buffer: bytes, nonce: bytes) -> int | None:
    """Where the echo of our HELLO ends in what the guest sent since we connected (a
    previous connection may have left bytes before it), or None if it is not there yet."""
    at = buffer.find(encode(Kind.HELLO, 0, nonce))
    return None if at < 0 else at + HEADER.size + HELLO_SIZE


def exit_status(payload: bytes) -> tuple[int, int]:
    """(exit code, signal) of an EXIT payload; the code is -1 when a signal ended it."""
    code, signum = struct.unpack(">ii", payload)
    if signum < 0 or signum > 64 or (signum == 0 and not 0 <= code <= 255):
        raise ProtocolError(f"the guest's command service sent an exit status {code}/{signum}")
    return code, signum
