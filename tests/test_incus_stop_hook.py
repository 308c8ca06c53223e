"""The raw.lxc lines that leave out lxcfs's sleeping post-stop hook (Incus stop ~0.1 s)."""

from __future__ import annotations

import os
from pathlib import Path

from sandboxer.backends.incus._stop_hook import LocalDaemon, included_post_stop_hooks, local_daemon


def test_the_lines_empty_the_hooks_then_put_back_incus_own() -> None:
    daemon = LocalDaemon("/usr/libexec/incus/incusd", "/var/lib/incus", "default")
    assert daemon.post_stop_lines("sbx-1") == [
        "lxc.hook.post-stop =",
        'lxc.hook.post-stop = /usr/libexec/incus/incusd callhook /var/lib/incus "default" '
        '"sbx-1" stop',
    ]


def test_only_included_post_stop_hooks_call_for_it(tmp_path: Path) -> None:
    assert not included_post_stop_hooks(tmp_path)
    (tmp_path / "00-other.conf").write_text("lxc.hook.mount = /x\n")
    assert not included_post_stop_hooks(tmp_path)
    (tmp_path / "00-lxcfs.conf").write_text("lxc.hook.post-stop = /usr/share/lxcfs/x\n")
    assert included_post_stop_hooks(tmp_path)
    assert not included_post_stop_hooks(tmp_path / "missing")


def test_the_daemon_is_known_only_from_a_visible_intact_executable() -> None:
    me = local_daemon("/var/lib/incus/unix.socket", os.getpid(), "default")
    assert me is not None and me.var_dir == "/var/lib/incus"
    assert me.executable == os.readlink("/proc/self/exe")
    assert local_daemon("/var/lib/incus/unix.socket", 2**22 + 7, "default") is None
    assert local_daemon("/var/lib/incus/unix.socket", os.getpid(), 'de"fault') is None
