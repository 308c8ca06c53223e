"""Attacks through an image that succeeded on some engine when the attack review found
them, each kept as a regression test of its fix (names that are root in the image's
passwd, its NSS modules in root-run steps, an image removed while it launches)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.attacks import AttackImages, text
from helpers.images import _entry, _tar
from helpers.registry import Registry

import sandboxer
from sandboxer.backends.libvirt import _backend as libvirt_backend_module
from sandboxer.images.store import default_store


@pytest.fixture(scope="module")
def attack(local_registry: Registry) -> Iterator[AttackImages]:
    images = AttackImages(local_registry)
    yield images
    images.clean()


@pytest.mark.parametrize(
    ("profile", "user"), [("hardened", None), ("default", "1000"), ("default", "1000:1000")]
)
def test_a_user_named_like_a_uid_never_makes_the_sandbox_root(
    backend: str, attack: AttackImages, profile: str, user: str | None
) -> None:
    """The image's /etc/passwd starts with a user NAMED "1000" of uid 0. A numeric user (the
    hardened profile's 1000:1000, or a spec's) is a uid, as Docker (runc) takes it; libvirt
    ran every exec as uid 0, Incus did for "1000"."""
    image = attack.push("passwd-alias", {"User": "0"}, attack.passwd_layer())
    with sandboxer.launch(image=image, backend=backend, profile=profile, user=user) as sb:
        assert text(sb, "head", "-1", "/etc/passwd").startswith("1000:x:0:0:")
        assert text(sb, "sh", "-c", "id -u; id -g") == "1000\n1000\n"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = str(metafunc.config.getoption("--backends")).split(",")
    for engine in ("libvirt",):  # tests of one engine's own mechanism
        if f"{engine}_backend" in metafunc.fixturenames:
            metafunc.parametrize(f"{engine}_backend", [n for n in names if n == engine])


def test_libvirt_an_image_removed_while_it_launches_is_a_clear_error(
    libvirt_backend: str, attack: AttackImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing holds the store's image between `image_disk` (resolve, derived disk) and
    QEMU opening the disk: an eviction or `sandboxer images rm` by another process in that
    window (several seconds: the KVM check, the initramfs) made the launch fail with a
    raw FileNotFoundError from chown. Wanted: the launch works, or a SandboxError."""
    image = attack.push("evicted", None, _tar([_entry("mark", data=b"evicted\n")]))

    def removed_meanwhile(plan: Any) -> Any:
        found = original(plan)
        default_store().remove(plan.image)  # as another process would, right then
        return found

    original = libvirt_backend_module.image_disk
    monkeypatch.setattr(libvirt_backend_module, "image_disk", removed_meanwhile)
    try:
        with sandboxer.launch(image=image, backend=libvirt_backend, profile="default") as sb:
            assert text(sb, "cat", "/mark") == "evicted\n"
    except sandboxer.SandboxError:
        pass


def test_a_named_user_the_image_makes_root_is_not_reported_non_root(
    backend: str, attack: AttackImages
) -> None:
    """A profile's user given by name ("app") is the image's to define: its /etc/passwd
    says uid 0. The sandbox runs as root, yet sb.enforcement reported non_root_user as
    enforced (the plan only compares the name with "0"/"root"). Wanted: not enforced, or
    refused, unless allowed (DESIGN: a claim about every process)."""
    layer = _tar([_entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\napp:x:0:0::/:/bin/sh\n")])
    image = attack.push("named-root", {"User": ""}, layer)
    profile = sandboxer.load_profile("default").derive("named-user", user="app")
    try:
        sb = sandboxer.launch(image=image, backend=backend, profile=profile)
    except sandboxer.SandboxError:
        return  # refused: fine
    with sb:
        uid = text(sb, "id", "-u")
        status = sb.enforcement.get("non_root_user")
        assert status is not None
        assert uid != "0\n" or not status.enforced, f"uid 0 while {status}"


# A glibc NSS module: whoever loads it leaves its ids in /tmp/pwned-nss.
NSS_MODULE = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void loaded(void) {
    FILE *f = fopen("/tmp/pwned-nss", "a");
    if (f) { fprintf(f, "uid=%d euid=%d\n", (int)getuid(), (int)geteuid()); fclose(f); }
}
"""


def test_libvirt_root_run_steps_never_load_the_images_nss_modules(
    libvirt_backend: str, attack: AttackImages, tmp_path: Path
) -> None:
    """Every exec drops root with util-linux setpriv, which resolves --reuid/--regid with
    getpwnam()/getgrnam() FIRST (a user NAMED "1000" wins over uid 1000), through NSS as
    the image's /etc/nsswitch.conf says: glibc dlopens the image's libnss_*.so into the
    still-root setpriv. Under the hardened profile, image code ran as root in the guest."""
    source = tmp_path / "evil.c"
    source.write_text(NSS_MODULE)
    module = tmp_path / "libnss_evil.so.2"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(module), str(source)],
        check=True,
        capture_output=True,
    )
    library, _ = _entry("usr/lib/x86_64-linux-gnu/libnss_evil.so.2", data=module.read_bytes())
    library.mode = 0o755
    layer = _tar(
        [
            _entry("etc/nsswitch.conf", data=b"passwd: evil files\ngroup: evil files\n"),
            (library, module.read_bytes()),
        ]
    )
    image = attack.push("nss-module", {"User": ""}, layer)
    with sandboxer.launch(image=image, backend=libvirt_backend, profile="hardened") as sb:
        assert text(sb, "id", "-u") == "1000\n"
        loaded = sb.exec(["cat", "/tmp/pwned-nss"])
        assert loaded.exit_code != 0, f"the image's NSS module ran: {loaded.stdout!r}"
