"""Attacks on the image pipeline that succeeded when the attack review found them, each
kept as a regression test of its fix (account lookups, layer headers, whiteouts, terminal
text, the store's root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sandboxer.backends.libvirt._guest_scripts import read


def _exec_sh_user(passwd: Path, user: str) -> subprocess.CompletedProcess[str]:
    """exec.sh's user lookup (from `home=/` to the setpriv comment) on `passwd`."""
    script = read("exec.sh")
    block = script[script.index("home=/") : script.index("# After setpriv")]
    block = block.replace("/etc/passwd", str(passwd))
    return subprocess.run(
        ["sh", "-c", f'user="$1"\n{block}\necho "$uid $gid"', "sh", user],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "entry",
    ["app:x:4294967295:0::/:/bin/sh", "app:x:0:4294967295::/:/bin/sh", "app:x:1:abc::/:/bin/sh"],
)
def test_libvirt_ids_from_the_images_passwd_are_checked(tmp_path: Path, entry: str) -> None:
    """setpriv --reuid/--regid=4294967295 is setresuid(-1): "keep", i.e. stay root. Incus
    now refuses ids past 2**32-2 from the image's passwd (InvalidSpec); the guest's
    exec.sh passed them on (and a gid that is not a number)."""
    passwd = tmp_path / "passwd"
    passwd.write_text(entry + "\n")
    done = _exec_sh_user(passwd, "app")
    assert done.returncode != 0, f"exec.sh would run as {done.stdout.strip()!r}"
