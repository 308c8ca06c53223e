"""tmpfs mounts of the spec: validated at construction, merged into the plan's tmpfs list
(the one every engine applies), and bounded in the fake as on an engine."""

from __future__ import annotations

from pathlib import Path

import pytest

import sandboxer
from sandboxer import InvalidSpec, Mount
from sandboxer._launch import make_plan
from sandboxer._models import TMPFS_MODE, TMPFS_SIZE
from sandboxer._plan import Tmpfs
from sandboxer.cli import build_parser
from sandboxer.cli._spec import spec_from

MIB = 1024**2


def test_defaults_are_dockers_mode_and_a_bounded_size() -> None:
    mount = Mount(target="/scratch/", tmpfs=True)
    assert (mount.target, mount.size, mount.mode) == ("/scratch", TMPFS_SIZE, TMPFS_MODE)
    assert (TMPFS_SIZE, TMPFS_MODE) == (64 * MIB, 0o1777)
    assert Mount(target="/s", tmpfs=True, size="16m", mode=0o700).size == 16 * MIB
    assert Mount(target="/s", tmpfs=True, size=4096).size == 4096


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"size": "0"}, "Mount.size"),
        ({"size": -1}, "Mount.size"),
        ({"size": "lots"}, "Mount.size"),
        ({"size": True}, "Mount.size"),
        ({"mode": 0o10000}, "Mount.mode"),
        ({"mode": -1}, "Mount.mode"),
        ({"mode": "1777"}, "Mount.mode"),
        ({"mode": True}, "Mount.mode"),
        ({"source": "/tmp"}, "Mount.source"),
        ({"volume": "data"}, "Mount.source"),
        ({"read_only": True}, "Mount.read_only"),
        ({"target": "relative"}, "Mount.target"),
        ({"target": "/"}, "Mount.target"),
        ({"target": "/proc/x"}, "Mount.target"),
        ({"target": ""}, "Mount.target"),
        ({"tmpfs": "yes"}, "Mount.tmpfs"),
    ],
)
def test_bad_tmpfs_fields_are_refused_naming_the_field(
    fields: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        Mount(**{"target": "/scratch", "tmpfs": True, **fields})  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize("field", ["size", "mode"])
def test_size_and_mode_belong_to_tmpfs_mounts_only(tmp_path: Path, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        Mount(source=str(tmp_path), target="/data", **{field: 1})  # type: ignore[arg-type]
    assert caught.value.field == f"Mount.{field}"


def test_parse_reads_dockers_tmpfs_syntax() -> None:
    assert Mount.parse_tmpfs("/run/app") == Mount(target="/run/app", tmpfs=True)
    mount = Mount.parse_tmpfs("/cache:size=8m,mode=700")
    assert (mount.target, mount.size, mount.mode) == ("/cache", 8 * MIB, 0o700)
    with pytest.raises(InvalidSpec, match=r"Mount\.mode"):
        Mount.parse_tmpfs("/cache:mode=rwx")
    with pytest.raises(InvalidSpec, match="tmpfs"):
        Mount.parse_tmpfs("/cache:exec")


def test_the_plan_applies_spec_tmpfs_with_the_profiles_and_binds_apart(tmp_path: Path) -> None:
    spec = sandboxer.SandboxSpec(
        backend="fake",
        mounts=[
            Mount(target="/scratch", tmpfs=True, size="1m", mode=0o750),
            Mount(source=str(tmp_path), target="/data"),
        ],
    )
    plan = make_plan(spec)
    assert [m.target for m in plan.mounts] == ["/data"]  # engines bind these only
    assert plan.tmpfs == (Tmpfs("/tmp", 64 * MIB), Tmpfs("/scratch", MIB, 0o750))
    assert plan.tmpfs[1].options == f"rw,nosuid,nodev,size={MIB},mode=750"
    assert plan.tmpfs[0].options.endswith(",mode=1777")


def test_a_spec_tmpfs_replaces_the_profiles_at_the_same_path() -> None:
    spec = sandboxer.SandboxSpec(
        backend="fake", mounts=[Mount(target="/tmp", tmpfs=True, size=4096)]
    )
    assert make_plan(spec).tmpfs == (Tmpfs("/tmp", 4096),)


def test_a_tmpfs_target_mounted_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match=r"mounts\[1\].target"):
        sandboxer.SandboxSpec(
            mounts=[Mount(source=str(tmp_path), target="/x"), Mount(target="/x", tmpfs=True)]
        )


def test_cli_tmpfs_flag_makes_tmpfs_mounts() -> None:
    args = build_parser().parse_args(
        ["run", "--tmpfs", "/a", "--tmpfs", "/b:size=2m,mode=1770", "--", "true"]
    )
    spec = spec_from(args)
    assert spec.mounts == (
        Mount(target="/a", tmpfs=True),
        Mount(target="/b", tmpfs=True, size=2 * MIB, mode=0o1770),
    )


def test_writing_past_the_size_fails_with_enospc_in_the_fake() -> None:
    with sandboxer.launch(backend="fake", mounts=[Mount(target="/s", tmpfs=True, size=1000)]) as sb:
        assert sb.exec(["sh", "-c", "echo hi > /s/a"]).exit_code == 0
        flood = sb.exec(["dd", "if=/dev/zero", "of=/s/b", "bs=1000", "count=1"])
        assert flood.exit_code != 0
        assert b"No space left on device" in flood.stderr
