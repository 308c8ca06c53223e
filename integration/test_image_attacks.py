"""An image author attacks the engines through what sandboxer passes on from an image:
its config (Env, WorkingDir, Entrypoint with shell syntax, quotes, line breaks meant for
raw.lxc or sandbox.conf), and a /.sandboxer of its own (a symlink meant to move the
helper's mount, or its own copies of the programs engines run from there as root). And a
root sandbox attacks the helper directory, which is the host's.

(Attacks that still succeed are in test_image_attacks_open.py until they are fixed.)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.attacks import (
    INJECTIONS,
    PLANTED_PROGRAMS,
    RECORDER,
    WORKDIR,
    AttackImages,
    no_injection_ran,
    program,
    text,
    wait_for,
)
from helpers.images import _entry, _tar
from helpers.registry import Registry

import sandboxer
from sandboxer.backends.incus._oci import alias
from sandboxer.images.helper import helper_dir


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test of Incus' own mechanism runs there only (when --backends names it).
    if "incus_backend" in metafunc.fixturenames:
        names = str(metafunc.config.getoption("--backends")).split(",")
        metafunc.parametrize("incus_backend", [n for n in names if n == "incus"])


@pytest.fixture(scope="module")
def attack(local_registry: Registry) -> Iterator[AttackImages]:
    images = AttackImages(local_registry)
    yield images
    images.clean()


# --- the image's config on its way to the engine ------------------------------------------
def test_hostile_config_values_arrive_verbatim_and_run_nothing(
    backend: str, attack: AttackImages
) -> None:
    """Env values, WorkingDir and Entrypoint arguments full of shell syntax, quotes and
    line breaks (Incus keeps one variable per line: line breaks in Env are tried below)."""
    arguments = INJECTIONS
    # Empty values: see the open tests.
    env = {f"ATTACK_{n}": v for n, v in enumerate(INJECTIONS) if v and "\n" not in v}
    image = attack.push(
        "config",
        {
            "Env": [*(f"{k}={v}" for k, v in env.items()), "PATH=/usr/bin:/bin"],
            "WorkingDir": WORKDIR,
            "Entrypoint": [*RECORDER, *arguments],
            "Cmd": None,
            "User": "",
        },
    )
    with sandboxer.launch(image=image, backend=backend, profile="default") as sb:
        assert wait_for(sb, "/tmp/argv"), "the entrypoint never ran"
        argv = sb.read_file("/tmp/argv")
        assert argv.split(b"\0")[:-1] == [value.encode() for value in arguments]
        assert text(sb, "cat", "/tmp/pwd") == WORKDIR + "\n"
        assert text(sb, "pwd") == WORKDIR + "\n"
        printed = text(sb, "env", "-0").split("\0")
        assert {f"{key}={value}" for key, value in env.items()} <= set(printed)
        no_injection_ran(sb)
        assert text(sb, "id", "-u") == "0\n"


def test_line_breaks_in_env_are_carried_or_refused_cleanly(
    backend: str, attack: AttackImages
) -> None:
    value = "one\nlxc.init.uid = 0\nSBX_USER=0\n$(touch /tmp/pwned-env)"
    image = attack.push("env-newline", {"Env": [f"ATTACK={value}", "PATH=/usr/bin:/bin"]})
    try:
        with sandboxer.launch(image=image, backend=backend, profile="hardened") as sb:
            assert text(sb, "printenv", "ATTACK") == value + "\n"
            assert text(sb, "id", "-u") == "1000\n"
            no_injection_ran(sb)
    except sandboxer.UnsupportedFeature as exc:
        assert backend == "incus", exc
        assert "line break" in str(exc)


def test_an_image_user_of_root_never_beats_the_hardened_profile(
    backend: str, attack: AttackImages
) -> None:
    for user in ("0", "root", "0:0", "root:root"):
        image = attack.push("user-root", {"User": user})
        with sandboxer.launch(image=image, backend=backend, profile="hardened") as sb:
            assert text(sb, "sh", "-c", "id -u; id -g") == "1000\n1000\n", user


# --- the helper's mount point ---------------------------------------------------------------
def _helper_listing() -> dict[str, tuple[int, int, bytes]]:
    return {
        entry.name: (entry.stat().st_mode, entry.stat().st_uid, Path(entry.path).read_bytes())
        for entry in os.scandir(helper_dir())
    }


PLANTED = {
    "symlink-etc": [_entry(".sandboxer", b"2", link="/etc")],
    "symlink-up": [_entry(".sandboxer", b"2", link="../../../../../../../../tmp")],
    "file": [_entry(".sandboxer", data=b"not a directory\n")],
    # Its own copies of what the engines run from /.sandboxer, as root.
    "directory": [
        _entry(".sandboxer", b"5"),
        _entry(".sandboxer/bin", b"5"),
        *(program(f".sandboxer/{name}") for name in PLANTED_PROGRAMS),
    ],
}


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_an_images_own_sandboxer_path_never_reaches_the_hosts_helper(
    backend: str, attack: AttackImages, planted: str
) -> None:
    """An image's /.sandboxer (a symlink to /etc or climbing out, a file, a directory with
    its own programs): none of its programs runs, and a root sandbox cannot change the
    helper on the host."""
    image = attack.push(
        f"helper-{planted}", {"Entrypoint": None, "Cmd": None}, _tar(PLANTED[planted])
    )
    before = _helper_listing()
    try:
        sb = sandboxer.launch(image=image, backend=backend, profile="default", user="0")
    except sandboxer.SandboxError as exc:
        refused = str(exc)
    else:
        refused = ""
        with sb:
            assert text(sb, "id", "-u") == "0\n"
            no_injection_ran(sb)
            # Root in the sandbox against the helper (on libvirt it is the guest's own copy
            # on a tmpfs, which root there may change: the VM is its own).
            # (Docker mounts it at /.sandboxer-<random>, where no image can plant anything.)
            for attempt in (
                "touch $d/x",
                "rm -f $d/busybox",
                "mount -o remount,rw,bind $d",
                "mount -o remount,rw $d",
                "umount -l $d && touch $d/x",
            ):
                sb.exec(["sh", "-c", f"for d in /.sandboxer*; do {attempt}; done"])
    assert _helper_listing() == before, f"the helper changed on the host ({refused})"
    assert not os.path.exists(helper_dir() / "x")


# --- fixed after this review (were in test_image_attacks_open.py) ------------------------
def test_an_empty_env_value_of_the_image_is_kept(backend: str, attack: AttackImages) -> None:
    """Incus reads an empty `environment.KEY` as "unset": the image's `EMPTY=` vanished
    (Docker and libvirt keep it)."""
    image = attack.push("empty-env", {"Env": ["EMPTY=", "PATH=/usr/bin:/bin"]})
    with sandboxer.launch(image=image, backend=backend, profile="default") as sb:
        assert "EMPTY=" in text(sb, "env").splitlines()


@pytest.mark.parametrize("link", ["/etc", "../../../../tmp"])
def test_an_images_sandboxer_symlink_does_not_break_an_idle_launch(
    backend: str, attack: AttackImages, link: str
) -> None:
    """Docker mounted the helper where the image's /.sandboxer symlink points (inside the
    container: over its /etc), then failed to start it with an engine error."""
    layer = _tar([_entry(".sandboxer", b"2", link=link)])
    image = attack.push("helper-symlink", {"Entrypoint": None, "Cmd": None}, layer)
    with sandboxer.launch(image=image, backend=backend, profile="default") as sb:
        assert text(sb, "test", "-f", "/etc/passwd") == ""


# --- Incus' converted copies ------------------------------------------------------------
def test_incus_trusts_no_alias_it_did_not_verify(incus_backend: str, attack: AttackImages) -> None:
    """Incus finds a converted image by its alias sandboxer/oci/<digest[:16]> alone: someone
    who may make aliases there (or a stale copy) substitutes another image for the digest
    asked for. DESIGN: ownership by identity, never by name; the image's properties carry
    the digest to check."""
    first = attack.push("alias-a", None, _tar([_entry("mark", data=b"a\n")]))
    second = attack.push("alias-b", None, _tar([_entry("mark", data=b"b\n")]))
    with sandboxer.launch(image=first, backend=incus_backend, profile="default") as sb:
        assert text(sb, "cat", "/mark") == "a\n"
    planted = alias(second.rpartition("@")[2])
    subprocess.run(["incus", "image", "alias", "delete", planted], capture_output=True)
    found = subprocess.run(
        ["incus", "image", "alias", "list", "--format=csv", alias(first.rpartition("@")[2])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fingerprint = found.split(",")[1]
    subprocess.run(["incus", "image", "alias", "create", planted, fingerprint], check=True)
    try:
        with sandboxer.launch(image=second, backend=incus_backend, profile="default") as sb:
            assert text(sb, "cat", "/mark") == "b\n", "launched the image the alias names"
    finally:
        subprocess.run(["incus", "image", "alias", "delete", planted], capture_output=True)
