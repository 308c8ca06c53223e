"""Readiness waits: what counts as listening, which log line matched, and the errors."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import _readiness as readiness
from sandboxer._vocabulary import Protocol

TCP_TABLE = b"""  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000
   1: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000
"""


def test_a_listening_socket_is_found_and_a_connected_one_is_not() -> None:
    assert readiness.listening_in(TCP_TABLE, 8080, Protocol.TCP)
    assert not readiness.listening_in(TCP_TABLE, 80, Protocol.TCP)  # established, not listening
    assert not readiness.listening_in(TCP_TABLE, 8081, Protocol.TCP)


@pytest.mark.parametrize(
    "table", [b"", b"header only\n", b"h\n\xff\xfe garbage 1F90\n", b"h\n0: :1F90 x 0A\n" * 3]
)
def test_hostile_tables_parse_without_errors(table: bytes) -> None:
    assert readiness.listening_in(table, 8080, Protocol.TCP) in (True, False)


def test_the_matching_line_is_returned_whole() -> None:
    pattern = readiness.pattern_argument(r"ready on \d+")
    assert readiness.matching_line(pattern, "boot\nserver ready on 80 now\nmore") == (
        "server ready on 80 now"
    )
    assert readiness.matching_line(pattern, "boot\n") is None


def test_not_ready_carries_the_last_log_lines() -> None:
    logs = "\n".join(f"line {n}" for n in range(100))
    with pytest.raises(sandboxer.NotReady) as caught:
        readiness.deadline_loop(lambda: None, "waiting for x", 0.05, 0.01, lambda: logs)
    assert isinstance(caught.value, TimeoutError)
    message = str(caught.value)
    assert "waiting for x" in message and "line 99" in message and "line 79" not in message


@pytest.fixture
def bare_proxy() -> Iterator[int]:
    """A port that accepts and closes at once, as an engine's proxy with nothing behind."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_a_proxy_with_nothing_behind_it_is_not_a_listener(bare_proxy: int) -> None:
    assert not readiness.accepts_on_host("127.0.0.1", bare_proxy)


def test_a_quiet_server_and_nothing_at_all() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert readiness.accepts_on_host("127.0.0.1", port)  # kept in the backlog, open
    assert not readiness.accepts_on_host("127.0.0.1", port)  # refused


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda sb: sb.wait_for_port(0), "guest_port"),
        (lambda sb: sb.wait_for_port(True), "guest_port"),
        (lambda sb: sb.wait_for_port(80, "sctp"), "protocol"),
        (lambda sb: sb.wait_for_port(80, timeout=-1), "timeout"),
        (lambda sb: sb.wait_for_log("("), "pattern"),
        (lambda sb: sb.wait_for_log(b"x"), "pattern"),
        (lambda sb: sb.wait_for_log("x", interval=0), "interval"),
        (lambda sb: sb.wait_for([]), "command"),
    ],
)
def test_bad_arguments_name_themselves(call: object, field: str) -> None:
    with sandboxer.launch(backend="fake") as sb:
        calls = len(sb.logs())
        with pytest.raises(sandboxer.InvalidSpec, match=re.escape(field)):
            call(sb)  # type: ignore[operator]
        assert len(sb.logs()) == calls  # nothing ran
