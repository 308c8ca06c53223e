"""The OCI layout writer, the built-in Debian images' recipes, and their build steps.

The build itself is exercised with a stand-in mmdebstrap (a script writing a small
tarball), so these run offline; the real build is an integration matter.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from sandboxer import ImageNotFound, ImagePullFailed
from sandboxer.images import _layout, debian
from sandboxer.images._apt_sources import debian_mirrors


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
    tar.addfile(info, io.BytesIO(data))


def _image(layout: Path, tag: str, text: bytes = b"hello\n", env: str = "A=1") -> str:
    layer = _layout.write_gzip_layer(layout, lambda tar: _add_file(tar, "etc/greeting", text))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [env]},
        "history": [{"created_by": f"test {tag}"}],
    }
    return _layout.add_image(layout, tag, config, [layer]).digest


def _json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _blob(layout: Path, descriptor: dict[str, Any]) -> bytes:
    data = _layout.blob_path(layout, descriptor["digest"]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
    assert len(data) == descriptor["size"]
    return data


def _tags(layout: Path) -> dict[str, str]:
    return {
        m["annotations"][_layout.REF_NAME]: m["digest"]
        for m in _json(layout / "index.json")["manifests"]
    }


# -- the layout writer ---------------------------------------------------------------------


def test_a_layout_holds_valid_documents_whose_digests_match_their_blobs(tmp_path: Path) -> None:
    digest = _image(tmp_path, "one")
    assert _json(tmp_path / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    index = _json(tmp_path / "index.json")
    assert index["schemaVersion"] == 2 and index["mediaType"] == _layout.INDEX_MEDIA_TYPE
    [entry] = index["manifests"]
    assert entry["digest"] == digest and entry["mediaType"] == _layout.MANIFEST_MEDIA_TYPE
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest = json.loads(_blob(tmp_path, entry))
    assert manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == _layout.CONFIG_MEDIA_TYPE
    config = json.loads(_blob(tmp_path, manifest["config"]))
    [layer] = manifest["layers"]
    assert layer["mediaType"] == _layout.LAYER_MEDIA_TYPE
    tar_bytes = gzip.decompress(_blob(tmp_path, layer))
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()],
    }
    assert config["config"] == {"Env": ["A=1"]}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.getmember("etc/greeting")
        assert tar.extractfile(member).read() == b"hello\n"  # type: ignore[union-attr]


def test_two_images_share_one_layout_and_replacing_one_keeps_the_other(tmp_path: Path) -> None:
    first = _image(tmp_path, "first")
    second = _image(tmp_path, "second", text=b"other\n")
    assert _tags(tmp_path) == {"first": first, "second": second}
    replaced = _image(tmp_path, "first", env="A=2")
    assert replaced != first
    assert _tags(tmp_path) == {"first": replaced, "second": second}


def test_writing_the_same_image_again_changes_nothing(tmp_path: Path) -> None:
    digest = _image(tmp_path, "same")
    before = {p.name: p.read_bytes() for p in (tmp_path / "blobs" / "sha256").iterdir()}
    index = (tmp_path / "index.json").read_bytes()
    assert _image(tmp_path, "same") == digest
    after = {p.name: p.read_bytes() for p in (tmp_path / "blobs" / "sha256").iterdir()}
    assert after == before  # the same blobs, and no temporary file left behind
    assert (tmp_path / "index.json").read_bytes() == index


def test_concurrent_writers_keep_every_image(tmp_path: Path) -> None:
    _layout.init_layout(tmp_path)
    tags = [f"tag{n}" for n in range(8)]
    threads = [threading.Thread(target=_image, args=(tmp_path, tag, tag.encode())) for tag in tags]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(_tags(tmp_path)) == tags


def test_a_failed_layer_leaves_no_blob(tmp_path: Path) -> None:
    _layout.init_layout(tmp_path)

    def fail(tar: tarfile.TarFile) -> None:
        _add_file(tar, "x", b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _layout.write_gzip_layer(tmp_path, fail)
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []


@pytest.mark.parametrize("tag", ["", "a/b", "a:b", "-x", "x" * 129, "../up"])
def test_a_bad_tag_is_refused_before_anything_is_written(tmp_path: Path, tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        _layout.add_image(tmp_path / "layout", tag, {}, [])
    assert not (tmp_path / "layout").exists()


def test_skopeo_and_umoci_read_the_layout(tmp_path: Path) -> None:
    digest = _image(tmp_path, "one")
    _image(tmp_path, "two", text=b"two\n")
    inspect = subprocess.run(
        ["skopeo", "inspect", f"oci:{tmp_path}:one"], capture_output=True, check=True, text=True
    )
    assert json.loads(inspect.stdout)["Digest"] == digest
    stat = subprocess.run(
        ["umoci", "stat", "--image", f"{tmp_path}:two", "--json"],
        capture_output=True,
        check=True,
        text=True,
    )
    [history] = json.loads(stat.stdout)["history"]
    assert history["created_by"] == "test two"


# -- the recipes ---------------------------------------------------------------------------


def test_the_recipe_key_is_a_stable_hash_per_image() -> None:
    keys = {name: debian.recipe_key(name) for name in debian.BUILTIN_OCI_IMAGES}
    assert keys == {name: debian.recipe_key(name) for name in debian.BUILTIN_OCI_IMAGES}
    assert all(len(key) == 64 and int(key, 16) >= 0 for key in keys.values())
    assert len(set(keys.values())) == 2


def test_the_recipe_key_changes_with_the_packages_and_the_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = debian.recipe_key("sandboxer/debian")
    recipe = debian._RECIPES["sandboxer/debian"]
    more = {
        **debian._RECIPES,
        "sandboxer/debian": debian._Recipe(packages=(*recipe.packages, "curl")),
    }
    monkeypatch.setattr(debian, "_RECIPES", more)
    assert debian.recipe_key("sandboxer/debian") != before
    monkeypatch.undo()
    monkeypatch.setattr(debian, "FORMAT_VERSION", debian.FORMAT_VERSION + "-next")
    assert debian.recipe_key("sandboxer/debian") != before


def test_an_unknown_name_is_not_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a built-in Debian image"):
        debian.recipe_key("sandboxer/minimal")
    with pytest.raises(ValueError, match="not a built-in Debian image"):
        debian.build_layout("debian:12", tmp_path / "layout", "x", None)
    assert not (tmp_path / "layout").exists()


def test_the_image_configs_follow_the_launch_rules() -> None:
    plain = debian._image_config("sandboxer/debian", debian._RECIPES["sandboxer/debian"])
    assert plain["config"]["Env"] == [f"PATH={debian.PATH}"]
    for absent in ("Entrypoint", "Cmd", "WorkingDir", "User"):
        assert absent not in plain["config"]  # the sandbox idles, ready for exec
    assert plain["config"]["Labels"]["sandboxer.recipe"] == debian.recipe_key("sandboxer/debian")
    system = debian._image_config("sandboxer/systemd", debian._RECIPES["sandboxer/systemd"])
    assert system["config"]["Cmd"] == ["/sbin/init"]
    assert "systemd-sysv" in debian._RECIPES["sandboxer/systemd"].packages
    assert {plain["architecture"], plain["os"]} == {"amd64", "linux"}


def test_building_without_mmdebstrap_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(ImageNotFound, match="apt-get install -y mmdebstrap"):
        debian.build_layout("sandboxer/debian", tmp_path, "x", None)
    assert list(tmp_path.iterdir()) == []


# A stand-in for mmdebstrap: writes a small rootfs tarball (as mmdebstrap names its
# members) to its TARGET argument, the one after the suite, and records its environment.
_FAKE_MMDEBSTRAP = """
import io, json, os, sys, tarfile
args = [a for a in sys.argv[1:] if not a.startswith("--")]
target = args[args.index("bookworm") + 1]
with open(os.path.join(os.path.dirname(target), "..", "..", "env.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "epoch": os.environ.get("SOURCE_DATE_EPOCH")}, f)
if os.environ.get("FAKE_FAIL"):
    print("I: running apt-get update...", file=sys.stderr)
    print("E: unable to reach the archive", file=sys.stderr)
    sys.exit(1)
print("I: downloading packages with apt...", file=sys.stderr)
def add(name, kind=tarfile.DIRTYPE, data=b"", link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime, info.size = kind, link, 4_000_000_000, len(data)
    info.uname = info.gname = "root"
    info.mode = 0o4755 if name.endswith("su") else 0o755
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    tar.addfile(info, io.BytesIO(data) if data else None)
with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as tar:
    add("./")
    add("./dev/")
    add("./dev/null", tarfile.CHRTYPE)
    add("./usr/")
    add("./usr/bin/")
    add("./usr/bin/su", tarfile.REGTYPE, b"setuid")
    add("./usr/bin/perl", tarfile.REGTYPE, b"perl")
    add("./usr/bin/perl5", tarfile.LNKTYPE, link="./usr/bin/perl")
    add("./bin", tarfile.SYMTYPE, link="usr/bin")
"""


@pytest.fixture
def fake_mmdebstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "mmdebstrap"
    script.write_text(f"#!{sys.executable}\n{_FAKE_MMDEBSTRAP}")
    script.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda _: str(script))
    return tmp_path


def test_a_build_turns_the_tarball_into_a_clean_layer(fake_mmdebstrap: Path) -> None:
    layout = fake_mmdebstrap / "layout"
    phases: list[str] = []
    debian.build_layout("sandboxer/debian", layout, "deb", lambda p, _n, _t: phases.append(p))
    assert "building sandboxer/debian: downloading packages with apt" in phases
    assert phases[-1] == "compressing the layer"
    recorded = _json(fake_mmdebstrap / "env.json")
    assert recorded["epoch"] == str(debian.EPOCH)
    assert "--include=python3" in recorded["argv"]
    [entry] = _json(layout / "index.json")["manifests"]
    manifest = json.loads(_blob(layout, entry))
    config = json.loads(_blob(layout, manifest["config"]))
    assert config["config"]["Labels"]["sandboxer.image"] == "sandboxer/debian"
    data = gzip.decompress(_blob(layout, manifest["layers"][0]))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["bin", "dev", "usr", "usr/bin", "usr/bin/perl", "usr/bin/perl5",
                               "usr/bin/su"]  # fmt: skip
    assert members["usr/bin/perl5"].islnk() and members["usr/bin/perl5"].linkname == "usr/bin/perl"
    assert members["usr/bin/su"].mode == 0o4755
    assert all(m.mtime == debian.EPOCH and m.uname == m.gname == "" for m in members.values())
    assert [p.name for p in layout.iterdir() if p.name.startswith(".")] == []


def test_a_failed_build_raises_with_mmdebstrap_s_words_and_leaves_no_scratch(
    fake_mmdebstrap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    layout = fake_mmdebstrap / "layout"
    with pytest.raises(ImagePullFailed, match="unable to reach the archive") as raised:
        debian.build_layout("sandboxer/systemd", layout, "sys", None)
    assert "exit status 1" in str(raised.value)
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert _json(layout / "index.json")["manifests"] == []


# -- the mirrors ---------------------------------------------------------------------------


def test_the_mirrors_are_the_host_s_debian_archives_for_the_suite(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n"
        "deb http://mirror.example/debian bookworm main  # again\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-updates\n"
        "  bookworm-backports\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
    )
    (tmp_path / "sources.list.d" / "node.sources").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
    )
    (tmp_path / "sources.list.d" / "old.list.disabled").write_text(
        "deb http://disabled.example/debian bookworm main\n"
    )
    assert debian_mirrors("bookworm", tmp_path) == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://security.example/debian-security bookworm-security main",
    ]
    assert debian_mirrors("trixie", tmp_path) == []
    assert debian_mirrors("bookworm", tmp_path / "missing") == []


def test_files_the_build_writes_are_world_readable(tmp_path: Path) -> None:
    _image(tmp_path, "one")
    for path in [tmp_path / "index.json", *(tmp_path / "blobs" / "sha256").iterdir()]:
        assert os.stat(path).st_mode & 0o777 == 0o644
