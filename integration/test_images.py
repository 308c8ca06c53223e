"""OCI images on every engine given by --backends, against the real local registry.

The same digest gives the same tree on every engine (each compared with the store's own
unpacking on the host); the image config's Entrypoint, Cmd, Env, WorkingDir and User
are honoured; pull policies; pull failures with their fix and nothing left behind; a
multi-arch index gives linux/amd64; setuid bits survive but no-new-privileges holds;
and a hostile layer never writes outside the image's tree (refused as a failed pull, or
contained).
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.images import (
    APP_ENV,
    APP_UID,
    APP_USER,
    APP_WORKDIR,
    ARM_MARKER,
    BASE_IMAGE,
    HOSTILE_ATTACKS,
    HOSTILE_ESCAPES,
    HOSTILE_TARGET,
    HOSTILE_VICTIM,
    MARKER,
    SETUID_ID,
    PushedImages,
)
from helpers.registry import LOCAL, UNREACHABLE, Registry, proxy_registry

import sandboxer
from sandboxer import Sandbox
from sandboxer.images.store import default_store
from sandboxer.testing.contract import _names

# Paths an engine provides itself, not the image: mount points and the files engines
# write (Docker's /etc/hosts, /etc/mtab and docker-init, mke2fs's lost+found, the helper
# tree at /.sandboxer, the VM guest's files-only /etc/nsswitch.conf: its root-run steps
# must never load the image's NSS modules).
ENGINE_OWNED = ("/proc", "/sys", "/dev", "/run", "/tmp", "/.sandboxer", "/lost+found")
ENGINE_FILES = {
    "/",
    "/.dockerenv",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/etc/mtab",
    "/etc/nsswitch.conf",
    "/usr/sbin/docker-init",
}
FIND = (
    "find / -xdev \\( "
    + " -o ".join(f"-path {path}" for path in ENGINE_OWNED)
    + " \\) -prune -o -printf '%p\\t%m\\t%U\\t%G\\t%y\\t%s\\t%l\\n'"
)
VARIANT_FILE = "/etc/sandboxer-variant"
SLEEP_UIDS = (
    "for p in /proc/[0-9]*; do "
    "[ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = 'sleep infinity ' ] "
    "&& awk '/^Uid:/ { print $2 }' $p/status; done; true"
)


def _run(sandbox: Sandbox, script: str, **options: Any) -> str:
    result = sandbox.exec(["sh", "-c", script], timeout=300, **options)
    assert result.exit_code == 0, result
    return result.stdout.decode()


# --- the same tree everywhere ------------------------------------------------------------
def _line(path: str, info: os.stat_result, link: str) -> str:
    kind = {
        stat.S_IFREG: "f",
        stat.S_IFDIR: "d",
        stat.S_IFLNK: "l",
        stat.S_IFCHR: "c",
        stat.S_IFBLK: "b",
        stat.S_IFIFO: "p",
        stat.S_IFSOCK: "s",
    }[stat.S_IFMT(info.st_mode)]
    size = str(info.st_size) if kind in "fl" else "-"  # a directory's size is the fs's
    return "\t".join(
        [
            path,
            f"{stat.S_IMODE(info.st_mode):o}",
            str(info.st_uid),
            str(info.st_gid),
            kind,
            size,
            link,
        ]
    )


# Where Docker mounts sandboxer's helper: a random name per sandbox (the mount point is
# the engine's, not the image's).
DOCKER_HELPER = re.compile(r"/\.sandboxer-[0-9a-f]{16}(/.*)?")


def _kept(path: str) -> bool:
    return (
        path not in ENGINE_FILES
        and not DOCKER_HELPER.fullmatch(path)
        and not any(path == owned or path.startswith(owned + "/") for owned in ENGINE_OWNED)
    )


def host_listing(rootfs: Path) -> list[str]:
    """The store's unpacked tree as `find -printf` prints it inside, links never followed."""
    lines = []
    for directory, subdirectories, files in os.walk(rootfs):
        for name in subdirectories + files:
            full = Path(directory, name)
            inside = "/" + str(full.relative_to(rootfs))
            if _kept(inside):
                info = full.lstat()
                link = os.readlink(full) if stat.S_ISLNK(info.st_mode) else ""
                lines.append(_line(inside, info, link))
        subdirectories[:] = [
            d for d in subdirectories if _kept(f"/{Path(directory, d).relative_to(rootfs)}")
        ]
    return sorted(lines)


def sandbox_listing(sandbox: Sandbox) -> list[str]:
    lines = []
    for line in _run(sandbox, FIND, user="0").splitlines():
        path, mode, uid, gid, kind, size, link = line.split("\t")
        if _kept(path):
            lines.append(
                "\t".join([path, mode, uid, gid, kind, size if kind in "fl" else "-", link])
            )
    return sorted(lines)


def _inside(rootfs: Path, path: str) -> Path:
    """`path` in the image tree on the host, its symlinks resolved within the tree."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    for _ in range(256):
        if not parts:
            return rootfs.joinpath(*resolved)
        part = parts.pop(0)
        if part == "..":
            resolved = resolved[:-1]
        elif part != ".":
            candidate = rootfs.joinpath(*resolved, part)
            if candidate.is_symlink():
                target = os.readlink(candidate)
                resolved = [] if target.startswith("/") else resolved
                parts = [p for p in target.split("/") if p] + parts
            else:
                resolved.append(part)
    raise AssertionError(f"{path}: too many links in the image")


@pytest.fixture(scope="module", params=["debian", "pulled"])
def image(request: pytest.FixtureRequest, pushed_images: PushedImages) -> str:
    return BASE_IMAGE if request.param == "debian" else pushed_images.app


def test_same_tree_and_os_release_as_the_store(backend: str, image: str) -> None:
    local = default_store().resolve(image, "missing")
    expected = host_listing(local.rootfs)
    assert len(expected) > 1000, "the image tree looks empty"
    if image != BASE_IMAGE:  # the layers' whiteouts and opaque directory were applied
        layers = [line.split("\t")[0] for line in expected if line.startswith("/opt/layers/")]
        assert sorted(layers) == [
            "/opt/layers/kept.txt",
            "/opt/layers/opaque",
            "/opt/layers/opaque/new.txt",
        ]
    with sandboxer.launch(image=image, backend=backend, profile="default") as sandbox:
        found = sandbox_listing(sandbox)
        os_release = sandbox.exec(["cat", "/etc/os-release"]).stdout
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    assert not missing and not extra, f"missing {missing[:20]}\nextra {extra[:20]}"
    assert os_release == _inside(local.rootfs, "/etc/os-release").read_bytes()
    assert b'VERSION_ID="12"' in os_release


# --- the image config --------------------------------------------------------------------
def _eventually_exists(sandbox: Sandbox, path: str) -> None:
    deadline = time.monotonic() + 60
    while sandbox.exec(["test", "-e", path]).exit_code != 0:
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.5)


def _marker(sandbox: Sandbox) -> str:
    """What the entrypoint script wrote when the sandbox started (it may still be starting)."""
    deadline = time.monotonic() + 60
    while (result := sandbox.exec(["cat", MARKER])).exit_code != 0:
        assert time.monotonic() < deadline, f"the entrypoint never ran: {result}"
        time.sleep(0.5)
    return result.stdout.decode()


@pytest.mark.parametrize(("profile", "uid"), [("default", APP_UID), ("hardened", 1000)])
def test_entrypoint_cmd_env_workdir_user(
    backend: str, pushed_images: PushedImages, profile: str, uid: int
) -> None:
    """The image's User applies where the profile names none (hardened names uid 1000)."""
    with sandboxer.launch(image=pushed_images.app, backend=backend, profile=profile) as sb:
        assert _marker(sb) == f"args=sleep infinity uid={uid} pwd={APP_WORKDIR} mode=test\n"
        assert _run(sb, SLEEP_UIDS).split() == [str(uid)], "the image's Cmd is not running"
        env = set(sb.exec(["env"]).stdout.decode().splitlines())
        assert {f"{key}={value}" for key, value in APP_ENV.items()} <= env
        assert sb.exec(["pwd"]).stdout.decode() == f"{APP_WORKDIR}\n"
        assert sb.exec(["id", "-u"]).stdout.decode() == f"{uid}\n"
        if profile == "default":
            assert sb.exec(["id", "-un"]).stdout.decode() == f"{APP_USER}\n"


def test_spec_overrides_the_image_config(backend: str, pushed_images: PushedImages) -> None:
    """The spec's command replaces Cmd (the Entrypoint stays), its env and workdir win."""
    with sandboxer.launch(
        image=pushed_images.app,
        backend=backend,
        profile="default",
        command=["sleep", "12345"],
        env={"APP_MODE": "spec"},
        workdir="/opt",
        user="0",
    ) as sb:
        assert _marker(sb) == "args=sleep 12345 uid=0 pwd=/opt mode=spec\n"
        assert sb.exec(["pwd"]).stdout == b"/opt\n"
    with sandboxer.launch(
        image=pushed_images.app,
        backend=backend,
        profile="default",
        entrypoint=["sh", "-c", "echo replaced > /tmp/replaced; exec sleep 2147483647"],
    ) as sb:
        _eventually_exists(sb, "/tmp/replaced")  # the main process starts in the background
        assert _run(sb, f"cat /tmp/replaced; test ! -e {MARKER} && echo no-marker") == (
            "replaced\nno-marker\n"
        )


# --- pull policies ---------------------------------------------------------------------------
def _launched_variant(backend: str, reference: str, pull: str) -> bool:
    """Whether `reference`, launched with `pull`, is the variant image (else the app)."""
    with sandboxer.launch(image=reference, backend=backend, pull=pull, profile="default") as sb:
        return sb.exec(["test", "-e", VARIANT_FILE]).exit_code == 0


def test_always_follows_a_moved_tag_missing_keeps_the_local_copy(
    backend: str, pushed_images: PushedImages, local_registry: Registry
) -> None:
    repository = pushed_images.moving_repository
    tag = f"moving-{backend}"  # one per engine: runs in parallel never move each other's
    reference = f"{LOCAL}/{repository}:{tag}"
    local_registry.copy_manifest(repository, "a", tag)
    assert not _launched_variant(backend, reference, "always")
    local_registry.copy_manifest(repository, "b", tag)
    assert not _launched_variant(backend, reference, "missing")
    assert _launched_variant(backend, reference, "always")
    assert _launched_variant(backend, reference, "missing")  # the new local copy


def test_missing_pulls_once_then_works_offline(
    backend: str, pushed_images: PushedImages, local_registry: Registry
) -> None:
    with proxy_registry(local_registry) as host:  # a registry that goes away below
        reference = f"{host}/sandboxer-test/app@{pushed_images.app_digest}"
        with sandboxer.launch(image=reference, backend=backend, pull="missing") as sb:
            assert sb.exec(["test", "-x", "/usr/bin/python3"]).exit_code == 0
    with sandboxer.launch(image=reference, backend=backend, pull="missing") as sb:
        assert sb.exec(["test", "-x", "/usr/bin/python3"]).exit_code == 0
    with sandboxer.launch(image=reference, backend=backend, pull="never") as sb:
        assert sb.exec(["true"]).exit_code == 0
    with pytest.raises(sandboxer.ImagePullFailed):  # the registry really is gone
        sandboxer.launch(image=reference, backend=backend, pull="always")


def test_never_without_a_local_copy_is_image_not_found(backend: str) -> None:
    before = _names(backend)
    for reference in (f"{UNREACHABLE}/sandboxer-test/app:1", f"{LOCAL}/sandboxer-test/app:never"):
        with pytest.raises(sandboxer.ImageNotFound) as missing:
            sandboxer.launch(image=reference, backend=backend, pull="never")
        assert not isinstance(missing.value, sandboxer.ImagePullFailed), missing.value
        assert "fix:" in str(missing.value)
    assert _names(backend) == before


@pytest.fixture
def failing_reference(
    request: pytest.FixtureRequest, pushed_images: PushedImages, mismatching_registry: str
) -> str:
    zero = "sha256:" + "0" * 64
    return {
        "unreachable": f"{UNREACHABLE}/sandboxer-test/app:1",
        "unknown tag": f"{LOCAL}/sandboxer-test/app:no-such-tag",
        "unknown digest": f"{LOCAL}/sandboxer-test/app@{zero}",
        "digest mismatch": f"{mismatching_registry}/sandboxer-test/app@{zero}",
    }[request.param]


@pytest.mark.parametrize(
    ("failing_reference", "reason"),
    [
        ("unreachable", r"unreachable|refused|connect"),
        ("unknown tag", r"unknown|not found|no such"),
        ("unknown digest", r"unknown|not found|no such"),
        ("digest mismatch", r"digest"),
    ],
    indirect=["failing_reference"],
)
def test_pull_failures_say_the_fix_and_leave_nothing(
    backend: str, failing_reference: str, reason: str
) -> None:
    before = _names(backend)
    for pull in ("missing", "always"):
        with pytest.raises(sandboxer.ImagePullFailed) as failed:
            sandboxer.launch(image=failing_reference, backend=backend, pull=pull)
        message = str(failed.value)
        assert re.search(reason, message, re.IGNORECASE), message
        assert "fix:" in message, message
    assert _names(backend) == before


# --- what the image holds ----------------------------------------------------------------------
def test_multi_arch_index_gives_linux_amd64(backend: str, pushed_images: PushedImages) -> None:
    local = default_store().resolve(pushed_images.multiarch, "always")
    assert local.digest == pushed_images.app_digest != pushed_images.arm64_digest
    with sandboxer.launch(image=pushed_images.multiarch, backend=backend, pull="always") as sb:
        assert _run(sb, f"test ! -e {ARM_MARKER} && uname -m") == "x86_64\n"
        assert sb.exec(["python3", "-c", "print(1)"]).stdout == b"1\n"


def test_setuid_bits_kept_but_no_new_privileges_holds(
    backend: str, pushed_images: PushedImages
) -> None:
    argv = [SETUID_ID, "-u"]  # a setuid-root copy of `id`: prints the effective uid
    with sandboxer.launch(
        image=pushed_images.app, backend=backend, profile="default", user="1000:1000"
    ) as sb:
        assert sb.exec(["stat", "-c", "%u %a", SETUID_ID]).stdout == b"0 4755\n"
        assert sb.exec(argv).stdout == b"0\n", "the setuid bit was lost: the attack has no teeth"
    with sandboxer.launch(image=pushed_images.app, backend=backend, profile="hardened") as sb:
        assert sb.exec(["stat", "-c", "%u %a", SETUID_ID]).stdout == b"0 4755\n"
        assert sb.exec(argv).stdout == b"1000\n", "setuid raised privileges under hardened"
        status = _run(sb, f"{SETUID_ID} >/dev/null; grep NoNewPrivs /proc/self/status")
        assert status.split() == ["NoNewPrivs:", "1"]


# --- a hostile layer ------------------------------------------------------------------------------
# Incus and libvirt get the image from sandboxer's store, which unpacks it; Docker
# unpacks its own pull: the same attacks are tried on each.
@pytest.fixture
def hostile_targets() -> Iterator[None]:
    """The host paths the hostile layer aims at: a directory with one file, and nothing;
    fixed paths (the layers name them), so one test at a time (xdist workers)."""
    with open(f"{HOSTILE_TARGET}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        HOSTILE_TARGET.mkdir(mode=0o755, exist_ok=True)
        for path in (*HOSTILE_ESCAPES, *HOSTILE_TARGET.iterdir()):
            path.unlink(missing_ok=True)
        HOSTILE_VICTIM.write_text("original\n")
        yield
        for path in (*HOSTILE_ESCAPES, *HOSTILE_TARGET.iterdir()):
            path.unlink(missing_ok=True)
        HOSTILE_TARGET.rmdir()


@pytest.mark.parametrize("attack", HOSTILE_ATTACKS)
def test_hostile_layer_writes_nothing_outside_the_image(
    backend: str, pushed_images: PushedImages, hostile_targets: None, attack: str
) -> None:
    before = _names(backend)
    try:
        sandbox = sandboxer.launch(
            image=f"{pushed_images.hostile}:{attack}", backend=backend, pull="always"
        )
    except sandboxer.SandboxError as refused:
        assert isinstance(refused, sandboxer.ImagePullFailed), refused  # refused as a pull
    else:
        with sandbox:  # contained: what the layer wrote stayed inside the image's tree
            listing = _run(sandbox, "ls -A /abs-link /rel-link 2>&1; cat /hard-link 2>&1; true")
            assert "original" not in listing, listing
    assert _names(backend) == before
    assert [p for p in HOSTILE_ESCAPES if os.path.lexists(p)] == []
    assert sorted(os.listdir(HOSTILE_TARGET)) == ["victim"]
    assert HOSTILE_VICTIM.read_text() == "original\n"
