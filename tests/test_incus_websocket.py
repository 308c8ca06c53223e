"""The Incus websocket reader, fed hand-built frames in every split: no daemon, no network.

Server frames are built here independently of the module (which only builds client frames)
and delivered by a fake socket in chunks: at every byte boundary for small streams, at
hypothesis-chosen cuts for big ones. Payloads must come out exactly and in order, pings must
be answered with pongs, and the stream must end at a close frame or at EOF. The reader
defines no protocol error of its own: a frame cut short by EOF is dropped and reported as
the end of the stream, and only a failed handshake raises (EngineError).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import operator
import random
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxer._errors import EngineError
from sandboxer.backends.incus._websocket import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    WebSocket,
)

Message = tuple[int, bytes]
KEY = b"\x9c\x01\xff\x5a"  # a mask key with high, low and zero-crossing bytes


def xor(key: bytes, data: bytes) -> bytes:
    # Byte by byte on purpose: a reference that shares nothing with the module's fast mask.
    return bytes(map(operator.xor, data, itertools.cycle(key)))


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    key: bytes | None = None,
    length_bits: int | None = None,
) -> bytes:
    """One frame as a peer sends it; `length_bits` forces the 7, 16 or 64-bit length form."""
    size = len(payload)
    bits = length_bits or (7 if size < 126 else 16 if size < 1 << 16 else 64)
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if key is not None else 0
    if bits == 7:
        header = bytes([first, masked | size])
    elif bits == 16:
        header = bytes([first, masked | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([first, masked | 127]) + size.to_bytes(8, "big")
    return header + payload if key is None else header + key + xor(key, payload)


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Decode what the client sent: (first header byte, unmasked payload) per frame."""
    frames = []
    while data:
        first, second = data[0], data[1]
        assert second & 0x80, "a client must mask every frame"
        size, start = second & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
        key, body = data[start : start + 4], data[start + 4 : start + 4 + size]
        assert len(body) == size, "the client sent a truncated frame"
        frames.append((first, xor(key, body)))
        data = data[start + 4 + size :]
    return frames


class WouldBlock:
    """In a chunk list: this recv() raises SSLWantReadError (TLS record not complete yet)."""


class FakeSocket:
    """Hands out one chunk per recv() (never more than asked for), then EOF if `eof`.

    Without `eof`, reading past the last chunk fails the test: the stream had to end first.
    """

    def __init__(self, chunks: Iterable[bytes | WouldBlock], eof: bool) -> None:
        # An empty chunk would read as EOF, which is not what a cut at a frame edge means.
        self.chunks = deque(chunk for chunk in chunks if chunk != b"")
        self.eof = eof
        self.sent = bytearray()
        self.send_error = False

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            assert self.eof, "read past the end: the stream should have ended at its close"
            return b""
        chunk = self.chunks.popleft()
        if isinstance(chunk, WouldBlock):
            raise ssl.SSLWantReadError
        if len(chunk) > size:
            self.chunks.appendleft(chunk[size:])
        return chunk[:size]

    def sendall(self, data: bytes) -> None:
        if self.send_error:
            raise BrokenPipeError
        self.sent += data

    def pongs(self) -> list[bytes]:
        frames = client_frames(bytes(self.sent))
        assert all(first == 0x80 | PONG for first, _ in frames), frames
        return [payload for _, payload in frames]


def connect(
    chunks: Iterable[bytes | WouldBlock], *, eof: bool = True
) -> tuple[WebSocket, FakeSocket]:
    sock = FakeSocket(chunks, eof)
    return WebSocket(cast(socket.socket, sock)), sock


def cut(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def read_all(websocket: WebSocket, sock: FakeSocket) -> list[Message]:
    """Everything received up to and including the first CLOSE (a close frame or EOF)."""
    received: list[Message] = []
    for _ in range(len(sock.chunks) + 2):
        received += websocket.receive()
        if (CLOSE, b"") in received:
            return received[: received.index((CLOSE, b"")) + 1]
    raise AssertionError(f"the stream never ended; received {received}")


def run(
    chunks: Sequence[bytes | WouldBlock], *, eof: bool = True
) -> tuple[list[Message], FakeSocket]:
    websocket, sock = connect(chunks, eof=eof)
    return read_all(websocket, sock), sock


# A small stream with every frame shape under 200 bytes: masked and unmasked, 7 and 16-bit
# lengths, a fragmented message with a ping, a pong and a reserved opcode in between.
FRAGMENTED = [b"frag-", b"", b"mented"]
SMALL = [
    (frame(BINARY, b"hello"), (BINARY, b"hello")),
    (frame(TEXT, "grüße".encode(), key=KEY), (TEXT, "grüße".encode())),
    (frame(BINARY, FRAGMENTED[0], fin=False, key=KEY), None),
    (frame(PING, b"are you there", key=KEY), None),
    (frame(CONTINUATION, FRAGMENTED[1], fin=False), None),
    (frame(PONG, b"unasked"), None),
    (frame(0x3, b"reserved opcode"), None),
    (frame(CONTINUATION, FRAGMENTED[2], key=KEY), (BINARY, b"".join(FRAGMENTED))),
    (frame(BINARY, bytes(range(126))), (BINARY, bytes(range(126)))),
    (frame(PING, b""), None),
    (frame(BINARY, b""), (BINARY, b"")),
    (frame(TEXT, b""), (TEXT, b"")),  # Incus's end-of-stream barrier
]
SMALL_STREAM = b"".join(data for data, _ in SMALL)
SMALL_MESSAGES = [message for _, message in SMALL if message is not None]
SMALL_PONGS = [b"are you there", b""]
CLOSING = frame(CLOSE, (1000).to_bytes(2, "big") + b"bye")


def test_a_stream_in_one_chunk() -> None:
    received, sock = run([SMALL_STREAM + CLOSING], eof=False)
    assert received == [*SMALL_MESSAGES, (CLOSE, b"")]
    assert sock.pongs() == SMALL_PONGS


def test_a_stream_split_at_every_byte_boundary() -> None:
    stream = SMALL_STREAM + CLOSING
    for at in range(len(stream) + 1):
        received, sock = run(cut(stream, [at]), eof=False)
        assert received == [*SMALL_MESSAGES, (CLOSE, b"")], f"split at {at}"
        assert sock.pongs() == SMALL_PONGS, f"split at {at}"


def test_a_stream_one_byte_at_a_time() -> None:
    stream = SMALL_STREAM + CLOSING
    received, sock = run([bytes([b]) for b in stream], eof=False)
    assert received == [*SMALL_MESSAGES, (CLOSE, b"")]
    assert sock.pongs() == SMALL_PONGS


def test_every_pair_of_split_points() -> None:
    stream = b"".join(
        [
            frame(TEXT, b"ab", fin=False, key=KEY),
            frame(PING, b"p"),
            frame(CONTINUATION, b"cd", key=KEY),
            frame(BINARY, b"xyz"),
            frame(CLOSE),
        ]
    )
    for first, second in itertools.combinations_with_replacement(range(len(stream) + 1), 2):
        received, sock = run(cut(stream, [first, second]), eof=False)
        assert received == [(TEXT, b"abcd"), (BINARY, b"xyz"), (CLOSE, b"")], (first, second)
        assert sock.pongs() == [b"p"]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 65537])
@pytest.mark.parametrize("key", [None, KEY], ids=["unmasked", "masked"])
def test_payload_lengths_at_the_length_form_edges(size: int, key: bytes | None) -> None:
    payload = random.Random(size).randbytes(size)
    data = frame(BINARY, payload, key=key)
    # A frame before, so the length is read mid-buffer; in one chunk, then cut inside the
    # extended lengths and the mask keys, not only between frames.
    stream = frame(TEXT, b"before") + data + data + CLOSING
    for cuts in [], [9, 11, 15, 20, 8 + len(data) + 5]:
        received, _ = run(cut(stream, cuts), eof=False)
        assert received == [(TEXT, b"before"), (BINARY, payload), (BINARY, payload), (CLOSE, b"")]


@pytest.mark.parametrize("length_bits", [7, 16, 64])
def test_lengths_are_read_from_the_header_in_any_form(length_bits: int) -> None:
    # A longer form than needed is still a valid header: the length field decides.
    short = frame(TEXT, b"short", length_bits=length_bits, key=KEY)
    stream = frame(BINARY, b"before") + short + frame(BINARY, b"next") + CLOSING
    for at in range(len(stream) + 1):
        received, _ = run(cut(stream, [at]), eof=False)
        expected = [(BINARY, b"before"), (TEXT, b"short"), (BINARY, b"next"), (CLOSE, b"")]
        assert received == expected, at


def test_a_close_frame_ends_the_stream_and_hides_its_payload() -> None:
    received, _ = run([frame(BINARY, b"last words") + CLOSING], eof=False)
    assert received == [(BINARY, b"last words"), (CLOSE, b"")]


def test_eof_ends_the_stream_and_drops_a_frame_cut_short() -> None:
    # Every prefix of the stream, then EOF: the complete messages, then CLOSE, never a
    # partial payload (the unfinished fragmented message included) and never an exception.
    completed = list(itertools.accumulate(len(data) for data, _ in SMALL))
    for length in range(len(SMALL_STREAM) + 1):
        expected = [m for (_, m), end in zip(SMALL, completed, strict=True) if m and end <= length]
        received, _ = run([SMALL_STREAM[:length]])
        assert received == [*expected, (CLOSE, b"")], f"EOF after {length} bytes"


def test_messages_handed_out_are_not_reused_buffers() -> None:
    stream = b"".join(
        [
            frame(BINARY, b"one-", fin=False),
            frame(CONTINUATION, b"two"),
            frame(TEXT, b"three-", fin=False),
            frame(CONTINUATION, b"four"),
        ]
    )
    websocket, _ = connect([stream])
    first, second = websocket.receive()
    assert first == (BINARY, b"one-two") and second == (TEXT, b"three-four")
    assert type(first[1]) is bytes and type(second[1]) is bytes


def test_parsed_frames_are_dropped_from_the_buffer() -> None:
    # The linear parser keeps only the unparsed tail, whatever the stream length so far.
    stream = SMALL_STREAM * 3
    edges = set(itertools.accumulate(len(data) for data, _ in SMALL * 3))
    websocket, _ = connect([bytes([b]) for b in stream])
    since_edge = 0
    for fed in range(1, len(stream) + 1):
        websocket.receive()
        since_edge = 0 if fed in edges else since_edge + 1
        assert len(websocket._buffer) == since_edge, f"after {fed} bytes"


def test_a_would_block_read_yields_nothing_and_keeps_the_partial_frame() -> None:
    data = frame(BINARY, b"across a TLS record", key=KEY)
    websocket, _ = connect([data[:9], WouldBlock(), data[9:], WouldBlock()], eof=False)
    assert websocket.receive() == []
    assert websocket.receive() == []
    assert websocket.receive() == [(BINARY, b"across a TLS record")]
    assert websocket.receive() == []


def test_a_ping_to_a_peer_that_hung_up_does_not_stop_the_reading() -> None:
    sock = FakeSocket([frame(PING, b"?") + frame(BINARY, b"after")], eof=True)
    sock.send_error = True
    websocket = WebSocket(cast(socket.socket, sock))
    assert read_all(websocket, sock) == [(BINARY, b"after"), (CLOSE, b"")]


# Random streams ---------------------------------------------------------------------------
Stream = tuple[bytes, list[Message], list[bytes], bool]
_sizes = st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 127, 65535, 65536, 70_000]))
_keys = st.one_of(st.none(), st.binary(min_size=4, max_size=4))


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    """Data messages, some fragmented, with pings and pongs between any two frames."""
    frames: list[bytes] = []
    messages: list[Message] = []
    pings: list[bytes] = []

    def maybe_control() -> None:
        if draw(st.booleans()):
            payload = draw(st.binary(max_size=125))
            opcode = draw(st.sampled_from([PING, PONG]))
            frames.append(frame(opcode, payload, key=draw(_keys)))
            if opcode == PING:
                pings.append(payload)

    for _ in range(draw(st.integers(0, 4))):
        opcode, size = draw(st.sampled_from([TEXT, BINARY])), draw(_sizes)
        payload = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
        cuts = draw(st.lists(st.integers(0, size), max_size=3))
        fragments = cut(payload, cuts)
        for index, fragment in enumerate(fragments):
            maybe_control()
            first, last = index == 0, index == len(fragments) - 1
            frames.append(
                frame(opcode if first else CONTINUATION, fragment, fin=last, key=draw(_keys))
            )
        messages.append((opcode, payload))
    maybe_control()
    closes = draw(st.booleans())
    if closes:
        frames.append(frame(CLOSE, draw(st.binary(max_size=125)), key=draw(_keys)))
    return b"".join(frames), messages, pings, closes


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(streams(), st.data())
def test_random_streams_in_random_chunks(stream: Stream, data: st.DataObject) -> None:
    payload, messages, pings, closes = stream
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=12))
    received, sock = run(cut(payload, cuts), eof=not closes)
    assert received == [*messages, (CLOSE, b"")]
    assert sock.pongs() == pings


# The handshake ----------------------------------------------------------------------------
def handshake_response(key: bytes, status: str = "101 Switching Protocols") -> bytes:
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (
        f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept.decode()}\r\n\r\n"
    ).encode()


def accept(chunks: Iterable[bytes], key: bytes) -> tuple[WebSocket, FakeSocket]:
    sock = FakeSocket(chunks, eof=True)
    return WebSocket.accept(cast(socket.socket, sock), key, "/exec"), sock


def test_frames_that_came_with_the_handshake_are_read_first() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    response = handshake_response(key)
    early = frame(BINARY, b"early")
    stream = b"".join(
        [
            response,
            early,
            frame(PING, b"hi"),
            frame(TEXT, b"", fin=False),
            frame(CONTINUATION, b""),
            frame(BINARY, b"later"),
        ]
    )
    for at in range(len(response), len(stream) + 1):
        websocket, sock = accept([stream[:at], stream[at:]], key)
        # Parsed on arrival: select() would not report bytes already read off the socket.
        assert websocket.pending() == (at >= len(response) + len(early)), at
        received = read_all(websocket, sock)
        assert received == [(BINARY, b"early"), (TEXT, b""), (BINARY, b"later"), (CLOSE, b"")]
        assert sock.pongs() == [b"hi"]


def test_a_handshake_split_at_every_byte_boundary() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    response = handshake_response(key)
    for at in range(len(response) + 1):
        websocket, sock = accept(cut(response, [at]), key)
        assert not websocket.pending()
        assert read_all(websocket, sock) == [(CLOSE, b"")]


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (handshake_response(b"key")[:-2], "closed early"),
        (handshake_response(b"key", "403 Forbidden"), "refused: HTTP/1.1 403 Forbidden"),
        (handshake_response(b"other key"), "bad Sec-WebSocket-Accept"),
    ],
)
def test_a_failed_handshake_raises_engine_error(response: bytes, error: str) -> None:
    with pytest.raises(EngineError, match=error):
        accept([response], b"key")
