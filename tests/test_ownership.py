"""Ownership by identity on the fake engine: launches remove only what they made, gc tells
owners apart across PID namespaces and keeps `keep` sandboxes, mount sources can't be
swapped after the check."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

import sandboxer
from sandboxer import ownership
from sandboxer._labels import KEEP, LAUNCH, OWNER, owner_identity
from sandboxer._launch import _live, make_plan
from sandboxer.testing import FakeBackend


@pytest.fixture(autouse=True)
def empty_engine() -> Iterator[None]:
    yield
    for name, box in list(FakeBackend.sandboxes.items()):
        FakeBackend().remove(name, box.plan.labels[LAUNCH])


def _made_elsewhere(name: str, **labels: str) -> None:
    """A sandbox of that name that another launch made."""
    plan = make_plan(sandboxer.SandboxSpec(backend="fake", name=name))
    FakeBackend().create(attrs.evolve(plan, labels={**plan.labels, **labels}))


def _owner_elsewhere(namespace: str) -> str:
    here = owner_identity(os.getpid())
    assert here is not None
    boot, _, pid, start = here.split(":")
    return f"{boot}:{namespace}:{pid}:{start}"


def test_a_failed_launch_leaves_another_launchs_sandbox_alone() -> None:
    _made_elsewhere("web")
    with pytest.raises(sandboxer.SandboxExists):
        sandboxer.launch(backend="fake", name="web")
    assert "web" in FakeBackend.sandboxes


def test_remove_with_another_launch_id_touches_nothing() -> None:
    sandbox = sandboxer.launch(backend="fake")
    FakeBackend().remove(sandbox.name, "another-launch")
    assert sandbox.name in FakeBackend.sandboxes
    sandbox.destroy()
    assert sandbox.name not in FakeBackend.sandboxes


def test_every_launch_has_its_own_id() -> None:
    first, second = (make_plan(sandboxer.SandboxSpec(backend="fake")) for _ in range(2))
    assert first.labels[LAUNCH] != second.labels[LAUNCH]


def test_an_owner_in_another_pid_namespace_is_not_judged() -> None:
    _made_elsewhere("theirs", **{OWNER: _owner_elsewhere("4026531999")})
    (info,) = [i for i in FakeBackend().list_sandboxes() if i.name == "theirs"]
    assert ownership.owner_alive(info) is None
    # Other tests' leftovers in the shared fake may go; this one must stay.
    assert "theirs" not in [removed.name for removed in sandboxer.gc()]


def test_the_owner_is_this_process_by_identity() -> None:
    with sandboxer.launch(backend="fake") as sandbox:
        assert sandbox.labels[OWNER] == owner_identity(os.getpid())
        (info,) = [i for i in FakeBackend().list_sandboxes() if i.name == sandbox.name]
        assert ownership.owner_alive(info) is True


def test_kept_sandboxes_outlive_their_owner_until_asked() -> None:
    sandbox = sandboxer.launch(backend="fake", keep=True)
    assert sandbox not in _live and sandbox.labels[KEEP] == "true"
    assert sandboxer.gc(session=sandbox.labels["sandboxer.session"]) == []
    removed = sandboxer.gc(session=sandbox.labels["sandboxer.session"], include_kept=True)
    assert [info.name for info in removed] == [sandbox.name]


def test_keep_must_be_a_bool() -> None:
    with pytest.raises(sandboxer.InvalidSpec, match="keep"):
        sandboxer.SandboxSpec(keep="yes")  # type: ignore[arg-type]


def test_a_mount_source_is_resolved_when_checked(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert sandboxer.Mount(str(tmp_path / "link"), "/data").source == str(real)


def test_a_mount_source_swapped_after_the_check_is_refused(tmp_path: Path) -> None:
    source, elsewhere = tmp_path / "source", tmp_path / "elsewhere"
    source.mkdir()
    elsewhere.mkdir()
    spec = sandboxer.SandboxSpec(backend="fake", mounts=[sandboxer.Mount(str(source), "/data")])
    source.rename(tmp_path / "moved")
    source.symlink_to(elsewhere)
    with pytest.raises(sandboxer.InvalidSpec, match=r"mounts\[0\]\.source"):
        sandboxer.launch(spec)
    source.unlink()
    source.mkdir()  # the same path, another directory
    with pytest.raises(sandboxer.InvalidSpec, match=r"mounts\[0\]\.source"):
        sandboxer.launch(spec)
    assert FakeBackend.sandboxes == {}


def test_root_as_the_spec_user_is_reported_not_enforced() -> None:
    for user in ("0", "root", "0:0", "root:1000"):
        with sandboxer.launch(backend="fake", user=user) as sandbox:
            status = sandbox.enforcement["non_root_user"]
            assert not status.enforced and "root" in status.mechanism
    with sandboxer.launch(backend="fake", user="1000:1000") as sandbox:
        assert sandbox.enforcement["non_root_user"].enforced
