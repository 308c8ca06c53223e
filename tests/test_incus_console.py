"""The Incus console log is read whole from the daemon's console.log, never through a link."""

from __future__ import annotations

from pathlib import Path

from sandboxer.backends.incus._console import console_tail, log_directory


def test_the_log_directory_follows_the_daemons_socket() -> None:
    assert log_directory("/var/lib/incus/unix.socket") == Path("/var/log/incus")
    assert log_directory("/srv/incus-a/unix.socket") == Path("/srv/incus-a/logs")


def test_the_tail_is_bounded_and_read_again_whole(tmp_path: Path) -> None:
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "console.log").write_bytes(b"first\nsecond\n")
    assert console_tail(tmp_path, "box", 1024) == b"first\nsecond\n"
    assert console_tail(tmp_path, "box", 1024) == b"first\nsecond\n"
    assert console_tail(tmp_path, "box", 7) == b"second\n"


def test_links_and_odd_names_give_nothing(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("host file")
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "console.log").symlink_to(tmp_path / "secret")
    assert console_tail(tmp_path, "box", 1024) is None
    assert console_tail(tmp_path, "missing", 1024) is None
    for name in ("", ".", "..", "a/b"):
        assert console_tail(tmp_path, name, 1024) is None
