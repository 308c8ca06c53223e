"""A minimal RFC 6455 client: just what Incus exec streams need, driven by a selector.

Incus sends each chunk of output as a binary message and ends a stream with an empty
text message (a "barrier"); the same barrier from us closes the command's stdin.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading

from sandboxer.backend import EngineError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CHUNK = 256 * 1024
# Incus sends output in small messages; anything far bigger is refused, not buffered.
MAX_MESSAGE = 16 * 1024 * 1024


def _mask(key: bytes, data: bytes) -> bytes:
    # XOR through one big integer: C speed, so megabytes of stdin cost milliseconds.
    size = len(data)
    if not size:
        return b""
    pad = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(size, "little")


def _frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    key = os.urandom(4)
    return header + key + _mask(key, payload)


class WebSocket:
    """One client connection over an already connected (unix, TCP or TLS) socket."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self._buffer = bytearray(leftover)
        self._position = 0  # where the next frame starts in _buffer
        self._message = bytearray()
        self._message_opcode = BINARY
        self.closed = False
        # Frames go out whole: a process's writer, its control calls and our pongs may
        # send from different threads.
        self._sending = threading.Lock()
        # Messages that arrived with the handshake response.
        self._ready = self._parse()

    @staticmethod
    def request_upgrade(sock: socket.socket, host: str, resource: str) -> bytes:
        """Send the upgrade request; the key `accept` checks the answer against."""
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\n\r\n"
        ).encode()
        sock.sendall(request)
        return key

    @classmethod
    def accept(cls, sock: socket.socket, key: bytes, resource: str) -> WebSocket:
        """Read the answer to `request_upgrade`: the connection, once the server agreed."""
        response = b""
        while b"\r\n\r\n" not in response:
            data = sock.recv(4096)
            if not data:
                raise EngineError(f"websocket handshake for {resource} closed early")
            response += data
        head, _, leftover = response.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise EngineError(f"websocket handshake refused: {lines[0]}")
        expected = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        if headers.get("sec-websocket-accept") != expected:
            raise EngineError("websocket handshake: bad Sec-WebSocket-Accept")
        return cls(sock, leftover)

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> bool:
        """Messages or TLS bytes already received (a selector would not report them)."""
        tls_pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
        return bool(self._ready) or tls_pending

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        with self._sending:
            self.sock.sendall(_frame(opcode, payload))

    def send(self, payload: bytes, opcode: int = BINARY) -> None:
        for start in range(0, max(len(payload), 1), _CHUNK):
            self._send_frame(opcode, payload[start : start + _CHUNK])

    def send_barrier(self) -> None:
        self._send_frame(TEXT, b"")

    def close(self) -> None:
        # Not behind a send still in flight (to a peer that stopped reading): the
        # shutdown below wakes that one up instead.
        if not self.closed and self._sending.acquire(blocking=False):
            try:
                with contextlib.suppress(OSError):
                    self.sock.sendall(_frame(CLOSE, struct.pack("!H", 1000)))
            finally:
                self._sending.release()
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def receive(self) -> list[tuple[int, bytes]]:
        """Read what is available now; complete messages, with (CLOSE, b"") at the end."""
        if self._ready:
            ready, self._ready = self._ready, []
            return ready
        try:
            data = self.sock.recv(_CHUNK)
        except ssl.SSLWantReadError:
            data = None
        if data == b"":
            return [*self._parse(), (CLOSE, b"")]
        if data:
            self._buffer += data
        return self._parse()

    def _parse(self) -> list[tuple[int, bytes]]:
        messages: list[tuple[int, bytes]] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                # Drop the parsed frames at once, not one by one (each a copy of the rest).
                del self._buffer[: self._position]
                self._position = 0
                return messages
            fin, opcode, payload = frame
            if opcode == PING:
                # Best effort: a peer that already hung up shows as EOF on the next read.
                with contextlib.suppress(OSError):
                    self._send_frame(PONG, payload)
            elif opcode == CLOSE:
                messages.append((CLOSE, b""))
            elif opcode in (TEXT, BINARY, CONTINUATION):
                if opcode != CONTINUATION:
                    self._message_opcode = opcode
                if fin and not self._message:
                    messages.append((self._message_opcode, payload))  # the usual: one frame
                    continue
                self._message += payload
                if fin:
                    messages.append((self._message_opcode, bytes(self._message)))
                    self._message.clear()

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buffer, start = self._buffer, self._position
        available = len(buffer) - start
        if available < 2:
            return None
        first, second = buffer[start], buffer[start + 1]
        size, header = second & 0x7F, 2
        if size == 126:
            if available < 4:
                return None
            size, header = struct.unpack_from("!H", buffer, start + 2)[0], 4
        elif size == 127:
            if available < 10:
                return None
            size, header = struct.unpack_from("!Q", buffer, start + 2)[0], 10
        if size > MAX_MESSAGE or len(self._message) > MAX_MESSAGE:
            raise EngineError(f"websocket message over {MAX_MESSAGE} bytes; refusing it")
        key = b""
        if second & 0x80:
            key, header = bytes(buffer[start + header : start + header + 4]), header + 4
        if available < header + size:
            return None
        with memoryview(buffer) as view:
            payload = bytes(view[start + header : start + header + size])
        self._position = start + header + size
        if key:
            payload = _mask(key, payload)
        return bool(first & 0x80), first & 0x0F, payload
