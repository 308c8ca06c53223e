"""Named volumes on the fake engine: validation, `-v` parsing, ownership, gc and the CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kits.owners import dead_owner

import sandboxer
from sandboxer import Mount, SandboxSpec, Volume, _registry, _selector
from sandboxer._labels import LAUNCH, MANAGED, OWNER, VOLUMES
from sandboxer._launch import make_plan
from sandboxer.backend import claim_volume_dir, volume_dir_owner
from sandboxer.cli import main
from sandboxer.testing import FakeBackend


@pytest.fixture(autouse=True)
def only_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the fake engine, emptied of sandboxes and volumes afterwards."""
    monkeypatch.setattr(_registry, "_entry_points", dict)
    _selector._probe_cache.clear()
    yield
    for name, box in list(FakeBackend.sandboxes.items()):
        FakeBackend().remove(name, box.plan.labels[LAUNCH])
    for name, (_, path) in list(FakeBackend.volume_store.items()):
        FakeBackend.volume_store.pop(name)
        subprocess.run(["rm", "-rf", path], check=True)
    _selector._probe_cache.clear()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def foreign(name: str, labels: dict[str, str] | None = None) -> None:
    """A volume made on the engine behind sandboxer's back."""
    FakeBackend().volumes().create(name, labels or {"made-by": "someone else"})


# validation --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a/b", "a b", "x" * 64, "ü", "a:b"])
def test_bad_volume_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(sandboxer.InvalidSpec, match=r"Mount\.volume"):
        Mount(volume=name, target="/data")
    with pytest.raises(sandboxer.InvalidSpec, match=r"^name"):
        Volume.create(name, backend="fake")


def test_a_mount_takes_a_source_or_a_volume_not_both(tmp_path: Path) -> None:
    with pytest.raises(sandboxer.InvalidSpec, match=r"Mount\.source"):
        Mount(source=str(tmp_path), volume="data", target="/data")
    with pytest.raises(sandboxer.InvalidSpec, match=r"Mount\.source"):
        Mount(target="/data")
    with pytest.raises(sandboxer.InvalidSpec, match=r"Mount\.size"):
        Mount(volume="data", target="/data", size="1m")
    with pytest.raises(sandboxer.InvalidSpec, match=r"Mount\.target"):
        Mount(volume="data", target="relative")


def test_volume_api_arguments_are_checked_before_any_engine_call() -> None:
    with pytest.raises(sandboxer.InvalidSpec, match=r"^backend"):
        Volume.create("data", backend="nope")
    with pytest.raises(sandboxer.InvalidSpec, match=r"labels\['sandboxer\.managed'\]"):
        Volume.create("data", backend="fake", labels={MANAGED: "false"})
    with pytest.raises(sandboxer.InvalidSpec, match=r"^ephemeral"):
        Volume.create("data", backend="fake", ephemeral="yes")  # type: ignore[arg-type]
    assert FakeBackend.volume_store == {}


# -v parsing (Docker's rule) -----------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "volume"),
    [("data:/data", "data"), ("my.vol_1:/d:ro", "my.vol_1"), ("db-2:/var/db:rw", "db-2")],
)
def test_a_source_without_a_slash_dot_or_tilde_is_a_volume(text: str, volume: str) -> None:
    mount = Mount.parse(text)
    assert (mount.volume, mount.source) == (volume, "")
    assert mount.read_only is text.endswith(":ro")


def test_a_source_with_a_slash_dot_or_tilde_is_a_host_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for text in (f"{tmp_path}:/a", "./sub:/a", "~/sub:/a", "sub/:/a", ".:/a"):
        assert Mount.parse(text).volume is None, text
    assert Mount.parse("~/sub:/a").source == str(tmp_path / "sub")
    with pytest.raises(sandboxer.InvalidSpec, match=r"Mount\.source"):
        Mount.parse("./missing:/a")


def test_run_v_takes_volumes_and_paths(tmp_path: Path) -> None:
    from sandboxer.cli import build_parser
    from sandboxer.cli._run_argv import canonical_argv
    from sandboxer.cli._spec import spec_from

    parser = build_parser()
    argv = ["run", "--backend", "fake", "-v", "cache:/cache:ro", "-v", f"{tmp_path}:/host", "--"]
    spec = spec_from(parser.parse_args(canonical_argv(parser, [*argv, "true"])))
    assert [(m.volume, m.target, m.read_only) for m in spec.mounts] == [
        ("cache", "/cache", True),
        (None, "/host", False),
    ]


# the plan and launch ----------------------------------------------------------------
def test_the_plan_keeps_volumes_apart_and_labels_the_sandbox(tmp_path: Path) -> None:
    spec = SandboxSpec(
        mounts=[Mount(volume="b", target="/b"), Mount(str(tmp_path), "/h"), Mount.parse("a:/a")]
    )
    plan = make_plan(spec)
    assert [m.target for m in plan.mounts] == ["/h"]
    assert [(v.name, v.target) for v in plan.volumes] == [("b", "/b"), ("a", "/a")]
    assert plan.labels[VOLUMES] == "a,b"


def test_launch_makes_a_missing_volume_as_ours_and_it_outlives_the_sandbox() -> None:
    with sandboxer.launch(backend="fake", mounts=[Mount.parse("kept:/data")]) as sb:
        sb.write_file("/data/file", b"hello")
        with pytest.raises(sandboxer.VolumeInUse, match=sb.name):
            Volume.get("kept", "fake").remove()
    volume = Volume.get("kept", "fake")
    assert volume.ours and not volume.ephemeral
    with sandboxer.launch(backend="fake", mounts=[Mount.parse("kept:/again:ro")]) as sb:
        assert sb.read_file("/again/file") == b"hello"
        with pytest.raises(sandboxer.SandboxError):
            sb.write_file("/again/other", b"x")
    volume.remove()
    volume.remove()  # gone already: nothing to do
    assert Volume.list("fake") == []


def test_an_existing_foreign_volume_is_mounted_but_never_removed() -> None:
    foreign("theirs")
    with sandboxer.launch(backend="fake", mounts=[Mount(volume="theirs", target="/t")]):
        pass
    assert FakeBackend.volume_store["theirs"][0] == {"made-by": "someone else"}
    with pytest.raises(sandboxer.InvalidSpec, match="not made by sandboxer"):
        Volume.get("theirs", "fake").remove()
    assert Volume.list() == []  # not ours: not listed
    assert "theirs" in FakeBackend.volume_store


def test_create_refuses_a_taken_name_and_list_filters_by_label() -> None:
    Volume.create("one", backend="fake", labels={"job": "7"})
    Volume.create("two", backend="fake")
    with pytest.raises(sandboxer.SandboxExists):
        Volume.create("one", backend="fake")
    assert [v.name for v in Volume.list(labels={"job": "7"})] == ["one"]
    assert sorted(v.name for v in Volume.list("fake")) == ["one", "two"]


# gc ----------------------------------------------------------------------------------
def test_gc_removes_ephemeral_volumes_of_exited_owners_and_all_only_when_asked() -> None:
    Volume.create("mine-alive", backend="fake", ephemeral=True)
    Volume.create("kept", backend="fake")
    Volume.create("orphan", backend="fake", ephemeral=True)
    FakeBackend.volume_store["orphan"][0][OWNER] = dead_owner()  # type: ignore[index]
    foreign("theirs", {MANAGED: "no"})
    assert sandboxer.gc() == []  # sandboxes only: volumes outlive their owners
    assert [v.name for v in sandboxer.gc_volumes(dry_run=True)] == ["orphan"]
    assert [v.name for v in sandboxer.gc_volumes()] == ["orphan"]
    with sandboxer.launch(backend="fake", mounts=[Mount(volume="kept", target="/k")]):
        removed = sandboxer.gc_volumes(all_unused=True)
    assert [v.name for v in removed] == ["mine-alive"]  # "kept" is in use
    assert sorted(FakeBackend.volume_store) == ["kept", "theirs"]


# ownership of a fresh volume's root ---------------------------------------------------
@pytest.mark.parametrize(
    ("user", "owner"),
    [
        ("1000:1000", (1000, 1000)),
        ("1000", (1000, 1000)),
        ("5:6", (5, 6)),
        ("0", None),
        ("root", None),
        ("sandbox", None),
        (None, None),
        ("1000:staff", None),
    ],
)
def test_the_owner_a_fresh_volume_root_gets(user: str | None, owner: object) -> None:
    assert volume_dir_owner(user) == owner


def test_claim_gives_only_a_fresh_root_owned_empty_directory(tmp_path: Path) -> None:
    fresh, used = tmp_path / "fresh", tmp_path / "used"
    fresh.mkdir()
    used.mkdir()
    (used / "data").write_text("root's")
    claim_volume_dir(str(fresh), "1000:1000")
    claim_volume_dir(str(used), "1000:1000")
    assert (fresh.stat().st_uid, fresh.stat().st_gid) == (1000, 1000)
    assert used.stat().st_uid == 0
    link = tmp_path / "link"
    link.symlink_to(used)
    with pytest.raises(OSError):
        claim_volume_dir(str(link), "1000:1000")  # a link is never followed


# CLI ---------------------------------------------------------------------------------
def test_volume_cli_create_ls_rm(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "volume", "create", "--backend", "fake", "-l", "a=b", "v1")[:2] == (
        0,
        "v1\n",
    )
    assert run_cli(capsys, "volume", "create", "--ephemeral", "v2")[0] == 0  # default engine
    foreign("theirs")
    code, out, _ = run_cli(capsys, "volume", "ls", "--json")
    listed = {v["name"]: v for v in json.loads(out)}
    assert code == 0 and sorted(listed) == ["v1", "v2"]
    assert listed["v1"]["labels"]["a"] == "b" and listed["v1"]["backend"] == "fake"
    assert run_cli(capsys, "volume", "ls", "-q", "--label", "a=b")[1] == "v1\n"
    code, out, err = run_cli(capsys, "volume", "rm", "v1", "theirs")
    assert (code, out) == (125, "v1\n") and "no volume of ours is called 'theirs'" in err
    assert sorted(FakeBackend.volume_store) == ["theirs", "v2"]
    code, out, err = run_cli(capsys, "volume", "create", "--backend", "fake", "bad/name")
    assert code == 2 and "bad/name" in err


def test_gc_volumes_flag(capsys: pytest.CaptureFixture[str]) -> None:
    Volume.create("leftover", backend="fake")
    code, out, _ = run_cli(capsys, "gc", "--all-sessions")
    assert code == 0 and "leftover" not in out
    code, out, _ = run_cli(capsys, "gc", "--all-sessions", "--volumes", "--json")
    assert code == 0 and json.loads(out)["volumes"] == [{"backend": "fake", "name": "leftover"}]
    assert FakeBackend.volume_store == {}
