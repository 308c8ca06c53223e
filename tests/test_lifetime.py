"""max_lifetime: validated, labelled with its deadline, held by a reaper process, honoured
by gc whoever owns the sandbox, and shown by `ls` (fake backend; no engine touched)."""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import attrs
import pytest

import sandboxer
from sandboxer import InvalidSpec, SandboxError, _gc, _launch, _reaper, _registry, _selector
from sandboxer._labels import CREATED_AT, EXPIRES, KEEP, LAUNCH
from sandboxer._launch import make_plan
from sandboxer.cli import build_parser, main
from sandboxer.cli._spec import spec_from
from sandboxer.testing import FakeBackend

Started = list[tuple[str, str, str, float]]


@pytest.fixture(autouse=True)
def reapers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Started]:
    """The fake alone, and the reapers launch would start, recorded instead of spawned."""
    monkeypatch.setattr(_registry, "_entry_points", dict)
    _selector._probe_cache.clear()
    started: Started = []
    monkeypatch.setattr(_launch, "start_reaper", lambda *args: started.append(args))
    yield started
    monkeypatch.undo()
    for name, box in list(FakeBackend.sandboxes.items()):
        FakeBackend().remove(name, box.plan.labels[LAUNCH])
    _selector._probe_cache.clear()


def planted(**spec: Any) -> sandboxer.SandboxInfo:
    """A sandbox of the fake engine as launch would label it, with no owner to end it."""
    plan = make_plan(sandboxer.SandboxSpec(backend="fake", **spec))
    handle = FakeBackend().create(plan)
    return sandboxer.SandboxInfo(
        "fake", handle.id, handle.name, sandboxer.SandboxState.RUNNING, plan.labels
    )


@pytest.mark.parametrize("value", [0, -5, True, "10", float("nan"), float("inf"), timedelta()])
def test_a_lifetime_must_be_positive_seconds_or_a_timedelta(value: object) -> None:
    with pytest.raises(InvalidSpec) as caught:
        sandboxer.SandboxSpec(max_lifetime=value)  # type: ignore[arg-type]
    assert caught.value.field == "max_lifetime"


def test_the_plan_labels_the_deadline_from_the_creation_time() -> None:
    spec = sandboxer.SandboxSpec(backend="fake", max_lifetime=timedelta(minutes=10))
    assert spec.max_lifetime == 600.0
    labels = make_plan(spec).labels
    assert float(labels[EXPIRES]) == pytest.approx(float(labels[CREATED_AT]) + 600, abs=0.01)
    assert EXPIRES not in make_plan(sandboxer.SandboxSpec(backend="fake")).labels


def test_launch_starts_a_reaper_for_the_deadline_only_when_asked(reapers: Started) -> None:
    with sandboxer.launch(backend="fake"):
        assert reapers == []
    with sandboxer.launch(backend="fake", max_lifetime=30) as sb:
        labels = FakeBackend.sandboxes[sb.name].plan.labels
        assert reapers == [("fake", sb.name, labels[LAUNCH], float(labels[EXPIRES]))]


def test_a_launch_whose_reaper_cannot_start_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> None:
        raise OSError("no processes left")

    monkeypatch.setattr(_launch, "start_reaper", broken)
    with pytest.raises(OSError, match="no processes left"):
        sandboxer.launch(backend="fake", max_lifetime=30)
    assert FakeBackend.sandboxes == {}


class Clock:
    """time.time and time.sleep for a reaper, without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_reaper_removes_its_sandbox_at_the_deadline() -> None:
    info, other = planted(), planted()
    clock = Clock()
    launch = info.labels[LAUNCH]
    removed = _reaper.reap(
        FakeBackend(), info.name, launch, 1075.0, clock=lambda: clock.now, sleep=clock.sleep
    )
    assert removed and clock.now == 1075.0
    assert clock.slept == [_reaper.CHECK_SECONDS, _reaper.CHECK_SECONDS, 15.0]
    assert set(FakeBackend.sandboxes) == {other.name}


def test_the_reaper_leaves_once_its_sandbox_is_gone() -> None:
    info = planted()
    clock = Clock()
    launch = info.labels[LAUNCH]

    def destroyed_meanwhile(seconds: float) -> None:
        clock.sleep(seconds)
        FakeBackend().remove(info.name, launch)

    done = _reaper.reap(
        FakeBackend(), info.name, launch, 5000.0, clock=lambda: clock.now, sleep=destroyed_meanwhile
    )
    assert not done and clock.slept == [_reaper.CHECK_SECONDS]


def test_the_reaper_tries_again_and_then_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    info = planted()
    calls: list[str] = []

    def failing(self: FakeBackend, name: str, launch: str) -> None:
        calls.append(name)
        raise SandboxError("engine restarting")

    monkeypatch.setattr(FakeBackend, "remove", failing)
    clock = Clock()
    with pytest.raises(SandboxError, match="engine restarting"):
        _reaper.reap(
            FakeBackend(),
            info.name,
            info.labels[LAUNCH],
            0.0,
            clock=lambda: clock.now,
            sleep=clock.sleep,
        )
    assert len(calls) == 5
    monkeypatch.setattr(_reaper, "_ATTEMPTS", 1)  # its entry point, without the pauses
    assert _reaper.main(["fake", info.name, info.labels[LAUNCH], "0"]) == 1


def test_the_reapers_entry_point_removes_by_launch_id() -> None:
    info = planted()
    assert _reaper.main(["fake", info.name, info.labels[LAUNCH], "0"]) == 0
    assert FakeBackend.sandboxes == {}


def later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """gc's clock, `seconds` ahead."""
    now = _gc.time.time() + seconds
    monkeypatch.setattr(_gc, "time", types.SimpleNamespace(time=lambda: now))


def test_gc_removes_an_expired_sandbox_even_kept_with_its_owner_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = planted(keep=True, max_lifetime=60)
    alive = planted(max_lifetime=60, labels={"job": "1"})
    endless = planted(keep=True)
    assert KEEP in kept.labels
    assert sandboxer.gc() == []  # before its end: its owner (this process) is alive
    later(monkeypatch, 120)
    removed = sandboxer.gc(session="another-session")  # any session: its end is absolute
    assert {info.name for info in removed} == {kept.name, alive.name}
    assert set(FakeBackend.sandboxes) == {endless.name}


def test_cli_max_lifetime_and_ls_time_left(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = build_parser().parse_args(["run", "--max-lifetime", "10m", "--", "true"])
    assert spec_from(args).max_lifetime == 600.0
    limited = planted(max_lifetime=3600)
    unlimited = planted()
    assert main(["ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "LEFT"
    left = {line.split()[1]: line.split()[-1] for line in lines[1:]}
    assert left == {limited.name: "59m", unlimited.name: "-"}
    monkeypatch.setattr("sandboxer.cli._manage.time", types.SimpleNamespace(time=lambda: 1e12))
    assert main(["ls", "--json"]) == 0
    shown = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert shown[limited.name]["seconds_left"] == 0
    assert shown[limited.name]["expires_at"] == float(limited.labels[EXPIRES])
    assert shown[unlimited.name]["seconds_left"] is None
    assert main(["ls"]) == 0
    assert "expired" in capsys.readouterr().out


def test_a_planted_label_out_of_range_is_no_deadline() -> None:
    info = planted()
    for text in ("soon", "nan", "inf"):
        odd = attrs.evolve(info, labels={**info.labels, EXPIRES: text})
        assert _gc.is_garbage(odd, older_than=None, session=None, now=1e12) is None
