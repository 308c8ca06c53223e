"""Attacks on the image pipeline that hold: hostile layers (tar entries, pax records,
links, whiteouts), hostile configs on their way to the engines, the helper's command line,
and registry documents. Each test builds the attack and checks that nothing outside the
tree changes and that the refusal is an `ImagePullFailed` naming the problem.

(Holes found by the same attacks are in test_image_attacks_open.py until they are fixed.)
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from kits.layers import GZIP, Entry, LayerKit

from sandboxer import EngineError, ImagePullFailed, InvalidSpec, SandboxError
from sandboxer.backends.incus._users import Identity, resolve
from sandboxer.backends.libvirt._guest_scripts import read
from sandboxer.images import ImageConfig, helper
from sandboxer.images._layer_blob import UnsafeImage
from sandboxer.images._layers import Limits
from sandboxer.images._oci import MAX_LAYERS, image_manifest, select_amd64
from sandboxer.images.helper import _INIT, INIT, init_command_line
from sandboxer.images.reference import parse_reference


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", **fields: Any) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, 0o755 if kind == tarfile.DIRTYPE else 0o644, 1
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data if kind == tarfile.REGTYPE else b""


def symlink(name: str, target: str) -> Entry:
    return entry(name, tarfile.SYMTYPE, linkname=target)


def hardlink(name: str, target: str) -> Entry:
    return entry(name, tarfile.LNKTYPE, linkname=target)


def directory(name: str, **fields: Any) -> Entry:
    return entry(name, tarfile.DIRTYPE, **fields)


# --- hard links ------------------------------------------------------------------------
def test_writing_over_a_hard_link_never_writes_into_its_target(layers: LayerKit) -> None:
    """The same layer and a later one: the name is replaced, the linked inode kept."""
    rootfs = layers.unpack(
        layers.layer(entry("etc/shadow", data=b"secret"), hardlink("copy", "etc/shadow")),
        layers.layer(entry("copy", data=b"overwritten")),
    )
    assert (rootfs / "etc/shadow").read_bytes() == b"secret"
    assert (rootfs / "copy").read_bytes() == b"overwritten"


def test_a_hard_link_rewritten_in_its_own_layer_keeps_its_target(layers: LayerKit) -> None:
    shared = layers.layer(entry("a", data=b"one"), hardlink("b", "a"), entry("b", data=b"two"))
    rootfs = layers.unpack(shared)
    assert (rootfs / "a").read_bytes() == b"one" and (rootfs / "b").read_bytes() == b"two"


def test_a_hard_link_to_a_symlink_links_the_symlink_never_its_target(layers: LayerKit) -> None:
    rootfs = layers.unpack(
        layers.layer(symlink("out", str(layers.outside / "passwd")), hardlink("also-out", "out"))
    )
    assert (rootfs / "also-out").is_symlink()
    assert os.readlink(rootfs / "also-out") == str(layers.outside / "passwd")
    layers.outside_untouched()


def test_a_hard_link_to_a_symlinked_directory_cannot_be_written_through(
    layers: LayerKit,
) -> None:
    layers.refused(
        layers.layer(
            symlink("out", str(layers.outside)),
            hardlink("also-out", "out"),
            entry("also-out/passwd", data=b"owned"),
        ),
        match="not a directory of the tree",
    )
    layers.outside_untouched()


@pytest.mark.parametrize(
    "target",
    ["/proc/self/root/etc/passwd", "//etc/passwd", "./../etc/passwd", "a/./../../x", ""],
)
def test_hard_links_out_of_the_tree_are_refused(layers: LayerKit, target: str) -> None:
    with pytest.raises(UnsafeImage):
        layers.unpack(layers.layer(hardlink("x", target)))
    assert os.listdir(layers.parent) == []


def test_a_hard_link_to_a_skipped_device_node_is_refused(layers: LayerKit) -> None:
    node = entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)
    layers.refused(layers.layer(node, hardlink("disk", "dev/sda")), match="not in the tree")


# --- symlinks, replaced directories, whiteouts --------------------------------------------
def test_a_directory_turned_symlink_in_a_later_layer_is_not_written_through(
    layers: LayerKit,
) -> None:
    layers.refused(
        layers.layer(directory("etc"), entry("etc/passwd")),
        layers.layer(symlink("etc", str(layers.outside))),
        layers.layer(entry("etc/passwd", data=b"owned"), directory("etc/cron.d")),
        match="not a directory of the tree",
    )
    layers.outside_untouched()


def test_a_directory_over_a_lower_symlink_replaces_the_link_only(layers: LayerKit) -> None:
    rootfs = layers.unpack(
        layers.layer(symlink("etc", str(layers.outside))),
        layers.layer(directory("etc", mode=0o700), entry("etc/passwd", data=b"image")),
    )
    assert not (rootfs / "etc").is_symlink() and (rootfs / "etc/passwd").read_bytes() == b"image"
    layers.outside_untouched()


@pytest.mark.parametrize("whiteout", [".wh.link", ".wh..wh..opq"])
def test_whiting_out_a_symlink_removes_the_link_never_its_target(
    layers: LayerKit, whiteout: str
) -> None:
    rootfs = layers.unpack(
        layers.layer(symlink("link", str(layers.outside)), symlink("rel", "../../outside")),
        layers.layer(entry(whiteout, data=b"")),
    )
    assert not (rootfs / "link").is_symlink()
    layers.outside_untouched()


@pytest.mark.parametrize(
    "name",
    [".wh..", ".wh...", ".wh.", "a/.wh..", "a/.wh..."],
    ids=["wh-dot", "wh-dotdot", "wh-empty", "nested-dot", "nested-dotdot"],
)
def test_whiteouts_that_name_no_entry_remove_nothing(layers: LayerKit, name: str) -> None:
    lower = layers.layer(directory("a"), entry("a/keep"), entry("keep"))
    try:
        rootfs = layers.unpack(lower, layers.layer(entry(name, data=b"")))
    except UnsafeImage:
        assert os.listdir(layers.parent) == []
        return
    assert (rootfs / "keep").exists() and (rootfs / "a" / "keep").exists()


def test_a_file_under_a_file_is_refused(layers: LayerKit) -> None:
    layers.refused(
        layers.layer(entry("a", data=b"file"), entry("a/b", data=b"below a file")),
        match="not a directory of the tree",
    )


# --- tar and pax tricks ------------------------------------------------------------------------
def _pax(name: str, records: dict[str, str], data: bytes = b"x") -> Entry:
    info, data = entry(name, data=data)
    info.pax_headers = records
    return info, data


@pytest.mark.parametrize(
    "records",
    [
        {"path": "../../escape-pax"},
        {"path": "a/../../../escape-pax"},
    ],
)
def test_a_pax_path_record_cannot_climb_out(layers: LayerKit, records: dict[str, str]) -> None:
    layers.refused(layers.layer(_pax("innocent", records)), match="'..' component")
    assert not (layers.parent.parent / "escape-pax").exists()


def test_a_pax_linkpath_record_cannot_hard_link_out(layers: LayerKit) -> None:
    info, _ = hardlink("innocent", "elsewhere")
    info.pax_headers = {"linkpath": str(layers.outside / "passwd")}
    with pytest.raises(UnsafeImage):
        layers.unpack(layers.layer((info, b"")))
    layers.outside_untouched()


@pytest.mark.parametrize("size", ["-1000000", "-1"])
def test_a_negative_pax_size_cannot_shrink_the_bound(layers: LayerKit, size: str) -> None:
    """A negative size would lower the running total, so later files could pass the bound."""
    small, big = _pax("credit", {"size": size}, b""), entry("big", data=b"y" * 4096)
    with pytest.raises(ImagePullFailed):
        layers.unpack(layers.layer(small, big), limits=Limits(max_bytes=1024))
    assert os.listdir(layers.parent) == []


def test_only_the_capability_xattr_is_kept(layers: LayerKit) -> None:
    """trusted.* / security.selinux from an image would steer the host's overlayfs or LSM."""
    records = {
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.security.selinux": "system_u:object_r:shadow_t:s0",
        "SCHILY.xattr.user.note": "hi",
    }
    rootfs = layers.unpack(layers.layer(_pax("f", records)))
    assert os.listxattr(rootfs / "f", follow_symlinks=False) == []


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_device_nodes_never_reach_the_host(layers: LayerKit, kind: bytes) -> None:
    mem = entry("dev/mem", kind, devmajor=1, devminor=1, mode=0o666)
    rootfs = layers.unpack(layers.layer(directory("dev"), mem))
    assert os.listdir(rootfs / "dev") == []


def test_a_name_with_a_newline_stays_one_entry(layers: LayerKit) -> None:
    rootfs = layers.unpack(layers.layer(entry("etc/evil\nname", data=b"n")))
    assert os.listdir(rootfs / "etc") == ["evil\nname"]


def test_an_overlong_symlink_target_is_refused_cleanly(layers: LayerKit) -> None:
    with pytest.raises(UnsafeImage):
        layers.unpack(layers.layer(symlink("l", "x" * 5000)))
    assert os.listdir(layers.parent) == []


def test_trailing_garbage_after_the_archive_is_bounded(layers: LayerKit) -> None:
    """A few KiB of tar, then 64 MiB of zeros (64 KiB compressed): refused, not read on."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("f")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeImage, match="more than its members declare"):
        layers.unpack(layers.raw(buffer.getvalue() + bytes(64 << 20)))


# --- where the tree is, and who may reach it -------------------------------------------------
def test_setuid_files_of_the_tree_are_unreachable_for_other_users(tmp_path: Path) -> None:
    """The store's tree directory is 0700: another user never reaches the image's setuid
    binaries nor its world-writable directories on the host."""
    from sandboxer.images.store import ImageStore

    store = ImageStore(tmp_path / "store")
    store._prepare()
    tree = store._tree("sha256:" + "a" * 64).parent
    tree.mkdir(mode=0o700, parents=True)
    assert stat.S_IMODE(store.root.lstat().st_mode) & 0o022 == 0
    assert stat.S_IMODE(tree.lstat().st_mode) == 0o700


# --- hostile configs --------------------------------------------------------------------------
HOSTILE_STRINGS = (
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "a'b\"c",
    "line\nlxc.apparmor.profile = unconfined",
    "-rf",
    "",
    " ",
    "\x1b]0;title\x07",
)


def test_the_helpers_command_line_keeps_every_argument_one_word() -> None:
    """`lxc.init.cmd` is one raw.lxc line that LXC splits on runs of spaces: one word per
    argument, the empty one too (it vanished, and the rest moved up: ["sh", "-c", "", "x"]
    ran `sh -c x`)."""
    line = init_command_line(HOSTILE_STRINGS)
    assert "\n" not in line and "\r" not in line
    words = line.split()  # as LXC does: empty words disappear
    assert words[:2] == [INIT, "--base64"]
    assert len(words[2:]) == len(HOSTILE_STRINGS)


def test_the_helpers_init_runs_hostile_argv_verbatim(tmp_path: Path) -> None:
    """The init decodes each word to exactly one argument, trailing newlines kept, and runs
    nothing from the arguments' text (the host's busybox runs it here)."""
    busybox = "/bin/busybox"
    assert os.path.exists(busybox), "apt-get install busybox-static"
    script = _INIT.replace("/.sandboxer/busybox", busybox)
    script = script.replace("exec -a", 'printf "%s\\0" "$name" "$@" > "$OUT"; exit 0; exec -a')
    argv = ["printf", *HOSTILE_STRINGS, "trailing\n\n"]
    out = tmp_path / "argv"
    line = init_command_line(argv).split()[1:]  # as LXC splits it
    done = subprocess.run(
        [busybox, "sh", "-c", script, "init", *line],
        env={"OUT": str(out), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]
    assert not Path("/tmp/pwned").exists()


def test_a_config_with_odd_types_is_refused_not_guessed() -> None:
    configs: tuple[object, ...] = (
        {"Env": "A=1"},
        {"Cmd": "sh -c evil"},
        {"Entrypoint": [1]},
        {"User": 0},
        {"WorkingDir": ["/"]},
        [],
    )
    for config in configs:
        with pytest.raises(ValueError):
            ImageConfig.from_oci({"config": config})


def test_the_profiles_user_beats_an_image_user_of_root() -> None:
    config = ImageConfig.from_oci({"config": {"User": "0:0"}})
    assert config.effective_user("1000:1000") == "1000:1000"
    assert config.effective_user(None) == "0:0"


# --- registry documents and references -------------------------------------------------------
def test_a_manifest_listing_too_many_layers_is_refused() -> None:
    layer = {"mediaType": GZIP, "digest": "sha256:" + "0" * 64, "size": 1}
    document = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {**layer, "mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [layer] * (MAX_LAYERS + 1),
    }
    with pytest.raises(ImagePullFailed, match="at most"):
        image_manifest(document, "x")


@pytest.mark.parametrize("size", [-1, 1.5, "1", None], ids=["negative", "float", "string", "null"])
def test_layer_descriptors_with_odd_sizes_are_refused(size: object) -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "0" * 64,
            "size": 1,
        },
        "layers": [{"mediaType": GZIP, "digest": "sha256:" + "1" * 64, "size": size}],
    }
    with pytest.raises(ImagePullFailed, match="descriptor"):
        image_manifest(document, "x")


@pytest.mark.parametrize(
    "text",
    [
        "localhost@evil.example/x",
        "user:pass@127.0.0.1:5000/x",
        "[::1]:5000/x",
        "127.0.0.1:5000/../x",
        "127.0.0.1:5000/x:tag\n",
        "evil.example/x:$(id)",
        "-v/x",
        "127.0.0.1:5000/" + "a" * 300,
        "127.0.0.1:5000/X",
        "127.0.0.1:5000/x@sha256:" + "0" * 63,
    ],
)
def test_odd_references_are_refused_before_any_engine_call(text: str) -> None:
    with pytest.raises(ValueError):
        parse_reference(text)


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("127.0.0.1:5000/x", True),
        ("localhost:5000/x", True),
        ("127.9.9.9:5000/x", True),
        ("localhost.evil.example/x", False),
        ("127.0.0.1.evil.example/x", False),
        ("0.0.0.0:5000/x", False),
        ("10.0.0.1:5000/x", False),
    ],
)
def test_plain_http_only_for_loopback(text: str, loopback: bool) -> None:
    assert parse_reference(text).on_loopback is loopback


# --- fixed after this review (were in test_image_attacks_open.py) ------------------------------
ALIASING_PASSWD = "1000:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"


def test_incus_a_numeric_user_is_never_looked_up_as_a_name() -> None:
    """spec user="1000" (or a profile's): a passwd entry NAMED "1000" with uid 0 must not
    make it root (runc: a numeric user is always a uid)."""
    assert resolve("1000", ALIASING_PASSWD, "") == Identity(1000, 1000, "/home/user")
    assert resolve("1000:1000", ALIASING_PASSWD, "").uid == 1000


@pytest.mark.parametrize(
    "passwd",
    [
        "app:x:abc:0::/:/bin/sh\n",
        "app:x:-1:-1::/:/bin/sh\n",
        "app:x:4294967295:4294967295::/:/bin/sh\n",  # (uid_t)-1: LXC keeps root
        "app:x:\u0661:0::/:/bin/sh\n",  # an Arabic-Indic digit int() reads
    ],
)
def test_incus_ids_from_the_images_passwd_are_checked(passwd: str) -> None:
    with pytest.raises(InvalidSpec):
        resolve("app", passwd, "")


@pytest.mark.parametrize("mtime", ["1e400", "-1e30", "nan", "99999999999999999999"])
def test_an_absurd_pax_mtime_is_refused_as_an_unsafe_image(layers: LayerKit, mtime: str) -> None:
    """It escaped as OverflowError/ValueError (the CLI said "internal error")."""
    with pytest.raises(UnsafeImage, match="mtime"):
        layers.unpack(layers.layer(_pax("f", {"mtime": mtime})))
    assert os.listdir(layers.parent) == []


@pytest.mark.parametrize("marker", ["srv/.wh..wh..opq", "srv/.wh.sub"])
def test_a_whiteout_never_hides_its_own_layers_entries_in_implied_directories(
    layers: LayerKit, marker: str
) -> None:
    """OCI: whiteouts hide lower layers only, whatever their order in the layer; a file of
    this layer under a directory it did not list (srv/sub) was removed with it."""
    rootfs = layers.unpack(
        layers.layer(directory("srv"), directory("srv/sub"), entry("srv/sub/old")),
        layers.layer(entry("srv/sub/new", data=b"new"), entry(marker, data=b"")),
    )
    assert sorted(os.listdir(rootfs / "srv/sub")) == ["new"]


def test_platform_names_from_a_registry_carry_no_terminal_escapes() -> None:
    index = {"manifests": [{"platform": {"os": "\x1b]0;owned\x07\x1b[2J", "architecture": "x"}}]}
    with pytest.raises(ImagePullFailed) as caught:
        select_amd64(index, "127.0.0.1:5000/x")
    assert "\x1b" not in str(caught.value) and "\x07" not in str(caught.value)


@pytest.mark.parametrize("planted", ["world-writable-root", "foreign-directory", "symlink"])
def test_the_helper_directory_is_never_one_someone_else_planted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """SANDBOXER_HELPER_DIR in a shared place (or a root others may write to): another user
    plants <key>/init (PID 1 of every OCI sandbox) or <key> -> /etc (Docker then bind-mounts
    the host's /etc, shadow included, into sandboxes). The store refuses such a root."""
    root = tmp_path / "helper"
    root.mkdir()
    monkeypatch.setenv(helper.HELPER_DIR_ENV, str(root))
    _, key = helper._static_busybox()
    if planted == "world-writable-root":
        root.chmod(0o777)
    elif planted == "foreign-directory":
        (root / key).mkdir()
        (root / key / "init").write_text("#!/bin/sh\necho planted\n")
        for path in (root / key, root / key / "init"):
            os.chown(path, 65534, 65534)
    else:
        (root / key).symlink_to("/etc")
    try:
        found = helper.helper_dir()
    except SandboxError:
        return
    info = found.lstat()
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
    assert stat.S_IMODE(root.lstat().st_mode) & 0o022 == 0
    assert (found / "init").read_text() == helper._INIT


# --- the store's root -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["symlink", "world-writable", "group-writable", "foreign"])
def test_a_store_root_others_could_plant_links_in_is_refused(tmp_path: Path, kind: str) -> None:
    """Whoever may write in the store's root could plant a symlink where the store writes
    as root (images/<hex>/tree, tmp/, oci/): refused before anything is made there."""
    from sandboxer.images.store import ImageStore

    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    root = tmp_path / "store"
    if kind == "symlink":
        root.symlink_to(real)
    else:
        root.mkdir()
        root.chmod({"world-writable": 0o777, "group-writable": 0o775}.get(kind, 0o755))
        if kind == "foreign":
            os.chown(root, 65534, 65534)
    with pytest.raises(EngineError, match="no one else may write"):
        ImageStore(root).resolve("127.0.0.1:5000/x:1", "never")
    if not root.is_symlink():  # (the symlink case: see the open tests)
        assert sorted(os.listdir(root)) in ([], ["locks"])


def _libvirt_user_ids(passwd: Path, user: str) -> tuple[str, str]:
    """exec.sh's user lookup (the lines between `home=/` and the setpriv comment), run on
    `passwd` in place of the guest's /etc/passwd."""
    script = read("exec.sh")
    block = script[script.index("home=/") : script.index("# After setpriv")]
    block = block.replace("/etc/passwd", str(passwd))
    done = subprocess.run(
        ["sh", "-c", f'user="$1"\n{block}\necho "$uid $gid"', "sh", user],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    uid, gid = done.stdout.split()
    return uid, gid


@pytest.mark.parametrize("user", ["1000:1000", "1000"])
def test_libvirt_a_numeric_user_is_never_looked_up_as_a_name(tmp_path: Path, user: str) -> None:
    """runc: "if the userArg is numeric, always treat it as a UID". The hardened profile's
    "1000:1000" became uid 0 in a guest whose image names a user "1000" with uid 0: every
    exec (and the main process) ran as root (integration: test_image_attacks.py)."""
    passwd = tmp_path / "passwd"
    passwd.write_text(ALIASING_PASSWD)
    assert _libvirt_user_ids(passwd, user) == ("1000", "1000")


def test_a_symlinked_store_root_gets_nothing_made_through_it(tmp_path: Path) -> None:
    """_prepare made root/locks (through the link, wherever it points) before it checked
    the root: SANDBOXER_IMAGE_DIR in a shared place lets another user choose where."""
    from sandboxer.images.store import ImageStore

    elsewhere = tmp_path / "chosen-by-someone-else"
    elsewhere.mkdir()
    root = tmp_path / "store"
    root.symlink_to(elsewhere)
    with pytest.raises(SandboxError):
        ImageStore(root).resolve("127.0.0.1:5000/x:1", "never")
    assert os.listdir(elsewhere) == []
