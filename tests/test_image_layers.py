"""Unpacking image layers: hostile layers cannot write outside the tree, whiteouts and
opaque directories work as OCI says, and ownership, modes and links are kept."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from kits.layers import GZIP, PLAIN, LayerKit

from sandboxer.images._layer_blob import Layer, UnsafeImage
from sandboxer.images._layers import Limits

MTIME = 1_600_000_000


def member(name: str, kind: str = "file", data: object = b"", **fields: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "link": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "chr": tarfile.CHRTYPE,
    }[kind]
    info.mode = fields.get("mode", 0o755 if kind == "dir" else 0o644)
    info.uid = fields.get("uid", 0)
    info.gid = fields.get("gid", 0)
    info.mtime = fields.get("mtime", MTIME)
    if kind in ("symlink", "link"):
        assert isinstance(data, str)
        info.linkname = data
    return info


@pytest.fixture
def outside(layers: LayerKit) -> Path:
    """A directory outside the tree that hostile layers aim at."""
    return layers.outside


def f(name: str, data: bytes = b"x", **fields: int) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, "file", **fields), data


def d(name: str, **fields: int) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, "dir", **fields), b""


def link(name: str, kind: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, kind, target), b""


def test_files_directories_links_and_fifos_are_made_as_the_image_says(layers: LayerKit) -> None:
    rootfs = layers.unpack(
        layers.layer(
            d("usr", uid=0),
            d("usr/bin"),
            f("usr/bin/su", b"su", mode=0o4755),
            f("usr/bin/wall", b"wall", mode=0o2755, gid=5),
            d("tmp", mode=0o1777),
            d("home/app", uid=1000, gid=1000, mode=0o700),
            f("home/app/notes", b"hi", uid=1000, gid=1000, mode=0o600),
            link("bin", "symlink", "usr/bin"),
            link("etc-passwd", "symlink", "/etc/passwd"),
            link("usr/bin/su2", "link", "usr/bin/su"),
            (member("run/pipe", "fifo", mode=0o620, uid=7), b""),
        )
    )
    su = (rootfs / "usr/bin/su").lstat()
    assert stat.S_IMODE(su.st_mode) == 0o4755 and (rootfs / "usr/bin/su").read_bytes() == b"su"
    wall = (rootfs / "usr/bin/wall").lstat()
    assert stat.S_IMODE(wall.st_mode) == 0o2755 and wall.st_gid == 5
    assert stat.S_IMODE((rootfs / "tmp").lstat().st_mode) == 0o1777
    home = (rootfs / "home/app").lstat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o700)
    assert (rootfs / "home/app/notes").lstat().st_uid == 1000
    assert os.readlink(rootfs / "bin") == "usr/bin"
    assert os.readlink(rootfs / "etc-passwd") == "/etc/passwd"  # kept, never followed
    assert (rootfs / "usr/bin/su2").lstat().st_ino == su.st_ino
    pipe = (rootfs / "run/pipe").lstat()
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620
    assert pipe.st_uid == 7
    assert su.st_mtime == MTIME and (rootfs / "usr").lstat().st_mtime == MTIME
    assert stat.S_IMODE(rootfs.lstat().st_mode) == 0o755


def test_uncompressed_layers_and_a_leading_slash_as_docker_strips_it(layers: LayerKit) -> None:
    rootfs = layers.unpack(layers.layer(f("/etc/hostname", b"box"), compress=False))
    assert (rootfs / "etc/hostname").read_bytes() == b"box"


def test_device_nodes_are_skipped(layers: LayerKit, caplog: pytest.LogCaptureFixture) -> None:
    rootfs = layers.unpack(layers.layer(d("dev"), (member("dev/sda", "chr"), b"")))
    assert os.listdir(rootfs / "dev") == []
    assert "device node" in caplog.text


def test_later_layers_replace_entries(layers: LayerKit) -> None:
    rootfs = layers.unpack(
        layers.layer(f("a", b"old"), d("b"), f("b/x"), link("c", "symlink", "a")),
        layers.layer(d("a"), f("b", b"file now"), f("c", b"real")),
    )
    assert (rootfs / "a").is_dir()
    assert (rootfs / "b").read_bytes() == b"file now"
    assert not (rootfs / "c").is_symlink() and (rootfs / "c").read_bytes() == b"real"


def test_a_hard_link_keeps_its_content_when_its_target_is_replaced(layers: LayerKit) -> None:
    rootfs = layers.unpack(
        layers.layer(f("a", b"one"), link("b", "link", "a")),
        layers.layer(f("a", b"two")),
    )
    assert (rootfs / "b").read_bytes() == b"one" and (rootfs / "a").read_bytes() == b"two"


def test_whiteouts_remove_entries_of_lower_layers(layers: LayerKit) -> None:
    rootfs = layers.unpack(
        layers.layer(d("etc"), f("etc/a"), f("etc/b"), d("var/cache"), f("var/cache/x")),
        layers.layer(f("etc/.wh.a"), f("var/.wh.cache"), f(".wh.missing"), f("nope/.wh.x")),
    )
    assert sorted(os.listdir(rootfs / "etc")) == ["b"]
    assert os.listdir(rootfs / "var") == []
    assert not (rootfs / "nope").exists()
    assert not (rootfs / ".wh.missing").exists()


def test_a_whiteout_does_not_hide_its_own_layers_entry(layers: LayerKit) -> None:
    rootfs = layers.unpack(layers.layer(f("a", b"kept"), f(".wh.a")))
    assert (rootfs / "a").read_bytes() == b"kept"


def test_an_opaque_directory_hides_the_lower_layers_only(layers: LayerKit) -> None:
    rootfs = layers.unpack(
        layers.layer(d("srv"), f("srv/old"), d("srv/olddir"), f("srv/olddir/x"), f("keep")),
        layers.layer(d("srv"), f("srv/before"), f("srv/.wh..wh..opq"), f("srv/after")),
    )
    assert sorted(os.listdir(rootfs / "srv")) == ["after", "before"]
    assert (rootfs / "keep").exists()


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_a_whited_out_directory_keeps_this_layers_entries_only(
    layers: LayerKit, whiteout_first: bool
) -> None:
    """Lower content under the name goes, this layer's stays, whatever the tar's order:
    under a directory it listed (srv/a) or one its deeper paths imply (srv/b)."""
    marker = f("srv/.wh.a"), f("srv/.wh.b")
    entries = d("srv/a"), f("srv/a/new"), f("srv/b/c/new")
    rootfs = layers.unpack(
        layers.layer(d("srv/a"), f("srv/a/old"), d("srv/b/c"), f("srv/b/c/old"), f("srv/b/x")),
        layers.layer(*(marker + entries if whiteout_first else entries + marker)),
    )
    assert os.listdir(rootfs / "srv/a") == ["new"]
    assert os.listdir(rootfs / "srv/b") == ["c"]
    assert os.listdir(rootfs / "srv/b/c") == ["new"]


@pytest.mark.parametrize("mtime", [2**40, -(2**40), 2**70])
def test_an_mtime_out_of_range_is_refused(layers: LayerKit, mtime: int) -> None:
    """Also in the header's base-256 field, which holds any integer."""
    info = member("f", mtime=0)
    info.mtime = mtime
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeImage, match="invalid mtime"):
        layers.unpack(layers.blob(raw.getvalue(), PLAIN))
    assert os.listdir(layers.parent) == []


def test_mtimes_before_1970_are_kept(layers: LayerKit) -> None:
    rootfs = layers.unpack(layers.layer((member("f", mtime=-86400), b"x")))
    assert os.lstat(rootfs / "f").st_mtime == -86400


@pytest.mark.parametrize(
    "entries",
    [
        [f("../escape")],
        [f("a/../../escape")],
        [d("a"), f("a/../../escape")],
        [link("x", "link", "../outside/passwd")],
    ],
    ids=["dotdot", "nested-dotdot", "dotdot-under-dir", "hardlink-dotdot"],
)
def test_names_with_dotdot_are_refused(
    layers: LayerKit, entries: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    layers.refused(layers.layer(*entries), match="'..' component")
    assert not (layers.parent.parent / "escape").exists()


def test_a_symlink_then_a_write_through_it_is_refused(layers: LayerKit, outside: Path) -> None:
    layers.refused(
        layers.layer(link("a", "symlink", str(outside)), f("a/passwd", b"owned")),
        match="not a directory of the tree",
    )
    assert (outside / "passwd").read_text() == "host\n"


def test_a_symlink_from_a_lower_layer_is_not_followed(layers: LayerKit, outside: Path) -> None:
    layers.refused(
        layers.layer(link("etc", "symlink", str(outside))),
        layers.layer(f("etc/passwd", b"owned"), d("etc/new")),
        match="not a directory of the tree",
    )
    assert os.listdir(outside) == ["passwd"]
    assert (outside / "passwd").read_text() == "host\n"


def test_a_relative_symlink_climbing_out_is_not_followed(layers: LayerKit, outside: Path) -> None:
    layers.refused(
        layers.layer(link("up", "symlink", "../../outside"), f("up/passwd", b"owned")),
        match="not a directory of the tree",
    )
    assert (outside / "passwd").read_text() == "host\n"


def test_hard_links_reach_only_entries_in_the_tree(layers: LayerKit, outside: Path) -> None:
    layers.refused(
        layers.layer(link("p", "link", str(outside / "passwd"))), match="not in the tree"
    )
    layers.refused(
        layers.layer(link("a", "symlink", str(outside)), link("p", "link", "a/passwd")),
        match="not a directory of the tree",
    )
    layers.refused(layers.layer(d("dir"), link("p", "link", "dir")), match="not in the tree")
    assert (outside / "passwd").stat().st_nlink == 1


def test_whiteouts_cannot_remove_anything_outside(layers: LayerKit, outside: Path) -> None:
    layers.refused(layers.layer(f(".wh..."), f("x")), match="names no entry")
    layers.refused(
        layers.layer(link("a", "symlink", str(outside))),
        layers.layer(f("a/.wh.passwd")),
        match="not a directory of the tree",
    )
    layers.refused(
        layers.layer(link("a", "symlink", str(outside))),
        layers.layer(f("a/.wh..wh..opq")),
        match="not a directory of the tree",
    )
    assert (outside / "passwd").exists()


def test_a_symlinked_tree_root_entry_changes_nothing_outside(
    layers: LayerKit, outside: Path
) -> None:
    """A `.` entry describes the tree's root: it never becomes a link to elsewhere."""
    rootfs = layers.unpack(layers.layer(d(".", mode=0o750), link("./", "symlink", str(outside))))
    assert stat.S_IMODE(rootfs.lstat().st_mode) == 0o750 and not rootfs.is_symlink()


@pytest.mark.parametrize(
    ("limits", "entries", "match"),
    [
        (Limits(max_bytes=1000), [f("big", b"x" * 1001)], "over the bound of 1000"),
        (Limits(max_bytes=10**6, max_member_size=10), [f("big", b"x" * 11)], "for one file"),
        (Limits(max_bytes=1500), [f("a", b"x" * 800), f("b", b"x" * 800)], "over 1500 bytes"),
        (Limits(max_bytes=10**6, max_members=3), [f(f"n{i}") for i in range(4)], "over 3"),
        (Limits(max_bytes=10**6), [f("d/" * 300 + "x")], "levels deep"),
        (Limits(max_bytes=10**6), [f("n" * 200 + "/" + "m" * 250)], None),
    ],
    ids=["total", "one-member", "sum", "members", "depth", "long-but-fine"],
)
def test_bounds(
    layers: LayerKit,
    limits: Limits,
    entries: list[tuple[tarfile.TarInfo, bytes]],
    match: str | None,
) -> None:
    layer = layers.layer(*entries)
    if match is None:
        layers.unpack(layer, limits=limits)
    else:
        layers.refused(layer, match=match, limits=limits)


def test_the_bounds_count_every_layer(layers: LayerKit) -> None:
    layers.refused(
        layers.layer(f("a", b"x" * 600)),
        layers.layer(f("a", b"x" * 600)),
        match="over 1000 bytes",
        limits=Limits(max_bytes=1000),
    )


def test_a_path_over_the_length_bound_is_refused(layers: LayerKit) -> None:
    layers.refused(layers.layer(f("/".join(["n" * 200] * 21))), match="bytes long")


def test_a_gzip_bomb_stops_at_the_size_bound(layers: LayerKit) -> None:
    """A tiny blob whose one member declares 1 GiB: refused from its header, unread."""
    info = member("bomb")
    info.size = 1 << 30
    header = info.tobuf(tarfile.PAX_FORMAT)
    stream = gzip.compress(header + bytes(1 << 20), mtime=0)  # truncated, but never read
    layers.refused(layers.blob(stream, GZIP), match="over the bound", limits=Limits(1 << 20))


def test_a_huge_header_is_refused_before_it_is_read(layers: LayerKit) -> None:
    info = member("x")
    info.pax_headers = {"comment": "c" * (9 << 20)}
    layers.refused(layers.layer((info, b"data")), match="header")


def _corrupt(layer: Layer, change: Callable[[bytes], bytes]) -> None:
    layer.path.write_bytes(change(layer.path.read_bytes()))


def test_a_blob_that_does_not_match_its_digest_is_refused(layers: LayerKit) -> None:
    layer = layers.layer(f("a", b"good"), compress=False)
    _corrupt(layer, lambda data: data.replace(b"good", b"evil"))
    layers.refused(layer, match="does not match its digest")


def test_a_blob_longer_than_its_manifest_says_is_refused(layers: LayerKit) -> None:
    layer = layers.layer(f("a", b"good"))
    _corrupt(layer, lambda data: data + b"\0" * 1024)
    layers.refused(layer, match="longer than its manifest says|does not match")


def test_a_broken_gzip_stream_is_refused(layers: LayerKit) -> None:
    layers.refused(layers.blob(b"\x1f\x8bnot gzip at all", GZIP), match="gzip|tar")


def test_zstd_layers_are_refused_with_the_fix(layers: LayerKit) -> None:
    blob = layers.blob(b"zstd", "application/vnd.oci.image.layer.v1.tar+zstd")
    with pytest.raises(Exception, match=r"zstd.*--dest-compress-format gzip"):
        layers.unpack(blob)
    assert os.listdir(layers.parent) == []


def test_the_tree_appears_only_when_every_layer_is_in(layers: LayerKit) -> None:
    good = layers.layer(f("a"))
    bad = layers.layer(f("../x"))
    layers.refused(good, bad, match="'..'")
    assert not layers.rootfs.exists()


def test_file_capabilities_are_kept(layers: LayerKit) -> None:
    """cap_net_raw+ep, as `setcap` writes it for ping (vfs_cap_data revision 2)."""
    capability = bytes.fromhex("0100000200200000000000000000000000000000")
    info, data = f("usr/bin/ping", b"ping", mode=0o755)
    record = capability.decode("utf-8", "surrogateescape")
    info.pax_headers = {"SCHILY.xattr.security.capability": record}
    rootfs = layers.unpack(layers.layer((info, data)))
    assert os.getxattr(rootfs / "usr/bin/ping", "security.capability") == capability


def test_malformed_file_capabilities_are_refused(layers: LayerKit) -> None:
    info, data = f("usr/bin/ping")
    info.pax_headers = {"SCHILY.xattr.security.capability": "nonsense"}
    layers.refused(layers.layer((info, data)), match="invalid capabilities")
