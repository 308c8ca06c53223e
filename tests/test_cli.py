"""The CLI, the reaper and attach, over the in-memory fake backend (no engine touched)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from typing import Any

import attrs
import pytest

import sandboxer
from sandboxer import _selector
from sandboxer._labels import (
    CREATED_AT,
    KEEP,
    MANAGED,
    OWNER,
    OWNER_PID,
    SESSION,
    owner_identity,
    session_id,
)
from sandboxer._launch import _live, make_plan
from sandboxer.cli import _completion, _manage, _output, build_parser, main
from sandboxer.cli._run_argv import canonical_argv
from sandboxer.cli._spec import spec_from
from sandboxer.testing import FakeBackend

# Every command sees the fake backend alone (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("only_fake_engines")


def parse(*argv: str) -> Any:
    """The namespace main() works on for `argv`."""
    parser = build_parser()
    return parser.parse_args(canonical_argv(parser, argv))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def planted(labels: dict[str, str] | None = None, **spec: Any) -> sandboxer.SandboxInfo:
    """A sandbox created behind sandboxer's back, with exactly these (extra) labels."""
    plan = make_plan(sandboxer.SandboxSpec(backend="fake", **spec))
    plan = attrs.evolve(plan, labels={**plan.labels, **(labels or {})})
    handle = FakeBackend().create(plan)
    return sandboxer.SandboxInfo(
        "fake", handle.id, handle.name, sandboxer.SandboxState.RUNNING, plan.labels
    )


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def dead_owner() -> dict[str, str]:
    """Owner labels of a process in this boot and PID namespace that has exited."""
    pid = dead_pid()
    here = owner_identity(os.getpid())
    assert here is not None
    boot, namespace = here.split(":")[:2]
    return {OWNER_PID: str(pid), OWNER: f"{boot}:{namespace}:{pid}:0"}


# parsing -----------------------------------------------------------------------------
def test_run_flags_make_the_spec(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HOST", "host-value")
    args = parse(
        *[
            "run",
            "--backend",
            "fake",
            "--profile",
            "default",
            "-v",
            f"{tmp_path}:/data:ro",
            "-p",
            "127.0.0.1:8080:80",
            "-p",
            "9000",
            "-e",
            "A=1",
            "-e",
            "FROM_HOST",
            "-e",
            "UNSET_X",
            "-l",
            "team=qa",
            "--memory",
            "256m",
            "--cpus",
            "1.5",
            "--pids",
            "64",
            "--network",
            "bridge",
            "-w",
            "/tmp",
            "-u",
            "1000",
            "--init",
            "--kind",
            "app",
            "--max-start-seconds",
            "5",
            "--keep",
            "--",
            "ls",
            "-l",
            "--keep",
        ]
    )
    spec = spec_from(args)
    assert args.argv == ["--", "ls", "-l", "--keep"] and args.detach
    assert spec.backend == "fake" and spec.profile.name == "default"
    assert spec.mounts == (sandboxer.Mount(str(tmp_path), "/data", read_only=True),)
    assert spec.ports == (sandboxer.PortMapping(80, 8080, "127.0.0.1"), sandboxer.PortMapping(9000))
    assert dict(spec.env) == {"A": "1", "FROM_HOST": "host-value"}
    assert dict(spec.labels) == {"team": "qa"}
    assert spec.resources == sandboxer.Resources(cpus=1.5, memory=256 * 1024**2, pids=64)
    assert (spec.network, spec.workdir, spec.user) == ("bridge", "/tmp", "1000")
    assert spec.requirements == sandboxer.Requirements(kind="app", init=True, max_start_seconds=5)


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1.5d", 129600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert _manage.duration(text) == seconds


def test_bad_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["gc", "--older-than", "soon"])
    assert exit_info.value.code == 2
    assert "expected a duration" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "run", "--backend", "fake")[0] == 2  # nothing to run
    code, out, err = run_cli(capsys, "run", "-e", "=x", "--", "true")
    assert (code, out) == (2, "") and "--env: expected K=V" in err
    code, _, err = run_cli(capsys, "run", "-v", "/does/not/exist:/x", "--", "true")
    assert code == 2 and "error: -v: does not exist" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "run", "--backend", "fake", "--network", "wide", "--", "true")
    assert code == 2 and "--network: no network 'wide'" in err


# run and exec ------------------------------------------------------------------------
def test_run_streams_output_and_passes_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys,
        "run",
        "--backend",
        "fake",
        "-e",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; env; exit 7",
    )
    assert code == 7
    assert out == "out\nGREETING=hi\n"
    assert err == "err\n"
    assert FakeBackend.sandboxes == {}  # removed afterwards


def test_run_timeout_exits_137(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--backend", "fake", "--timeout", "1", "--", "sleep", "5")
    assert code == 137 and "--timeout 1s" in err


def test_run_feeds_stdin_with_interactive(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sys, "stdin", types.SimpleNamespace(buffer=types.SimpleNamespace(read=lambda: b"piped\n"))
    )
    assert run_cli(capsys, "run", "-i", "--backend", "fake", "--", "cat")[:2] == (0, "piped\n")


def test_engine_errors_exit_125_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "run", "--backend", "nosuch", "--", "true")
    assert code == 125 and out == ""
    assert err.startswith("sandboxer: error: backend 'nosuch' is unavailable")
    assert "Traceback" not in err
    code, _, err = run_cli(
        capsys, "run", "--image", "no/such-image", "--backend", "fake", "--", "true"
    )
    assert code == 125 and "no image" in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--debug", "run", "--backend", "nosuch", "--", "true")
    assert code == 125 and "Traceback" in err


def test_internal_errors_are_one_line_unless_debugging(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(_manage, "inventory", broken)
    code, _, err = run_cli(capsys, "ls")
    assert code == 125 and "internal error: RuntimeError: boom" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["--debug", "ls"])


@pytest.mark.parametrize("flag", ["-d", "--detach", "--keep"])
def test_detach_leaves_the_sandbox_and_prints_its_name(
    capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    code, out, err = run_cli(capsys, "run", "--backend", "fake", "--name", "kept-one", flag)
    assert (code, out, err) == (0, "kept-one\n", "")
    box = FakeBackend.sandboxes["kept-one"]
    assert box.plan.labels[KEEP] == "true" and box.plan.command is None
    assert not any(getattr(s, "name", None) == "kept-one" for s in _live)  # survives our exit
    assert [info.name for info in sandboxer.gc(older_than=0)] == []  # gc keeps it


def test_exec_finds_by_name_and_id_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    info = planted(name="target")
    code, out, _ = run_cli(capsys, "exec", "target", "--", "sh", "-c", "echo in; exit 4")
    assert (code, out) == (4, "in\n")
    code, out, _ = run_cli(
        capsys, "exec", "-e", "X=1", "-w", "/tmp", info.id[:8], "--", "sh", "-c", "env; pwd"
    )
    assert (code, out) == (0, "X=1\n/tmp\n")
    code, _, err = run_cli(capsys, "exec", "missing", "--", "true")
    assert code == 125 and "no sandbox of ours" in err
    assert run_cli(capsys, "exec", "target")[0] == 2  # no command


def test_ambiguous_prefix_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    first, second = planted(), planted()
    FakeBackend.sandboxes[second.name].id = first.id[:4] + second.id[4:]  # ids sharing a prefix
    code, _, err = run_cli(capsys, "rm", first.id[:4])
    assert code == 2 and "ambiguous" in err and len(FakeBackend.sandboxes) == 2


def test_attach_gives_a_working_sandbox_that_this_process_does_not_own() -> None:
    info = planted(name="attached")
    sandbox = sandboxer.attach("attached")
    assert (sandbox.name, sandbox.id, sandbox.backend) == ("attached", info.id, "fake")
    assert sandbox.exec(["echo", "x"]).stdout == b"x\n"
    assert sandbox not in _live
    assert sandboxer.inventory().find(info.id).name == "attached"
    sandbox.destroy()
    assert "attached" not in FakeBackend.sandboxes


def test_detach_forgets_a_launched_sandbox() -> None:
    sandbox = sandboxer.launch(backend="fake")
    assert sandbox in _live
    sandboxer.detach(sandbox)
    assert sandbox not in _live
    sandbox.destroy()


# ls and rm ---------------------------------------------------------------------------
def test_ls_table_json_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    owner = dead_owner()
    gone = owner[OWNER_PID]
    planted(name="mine")
    planted(owner, name="orphan")
    planted({MANAGED: "false"}, name="foreign")
    code, out, _ = run_cli(capsys, "ls")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == list(_output.INFO_HEADERS)
    assert len(lines) == 3
    rows = {line.split()[1]: line for line in lines[1:]}
    assert str(os.getpid()) in rows["mine"] and session_id() in rows["mine"]
    assert f"{gone} (exited)" in rows["orphan"]
    code, out, _ = run_cli(capsys, "ls", "--json")
    listed = {entry["name"]: entry for entry in json.loads(out)}
    assert set(listed) == {"mine", "orphan"}
    assert listed["mine"]["owner_alive"] is True and listed["orphan"]["owner_alive"] is False
    assert listed["mine"]["state"] == "running" and listed["mine"]["age_seconds"] >= 0
    assert listed["mine"]["labels"][SESSION] == session_id()
    assert run_cli(capsys, "ls", "-q")[1].split() == ["mine", "orphan"]


def test_ls_reports_an_engine_named_but_unavailable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeBackend, "available", False)
    assert run_cli(capsys, "ls")[:2] == (0, _output.table(_output.INFO_HEADERS, []) + "\n")
    _selector._probe_cache.clear()
    code, _, err = run_cli(capsys, "ls", "--backend", "fake")
    assert code == 125 and "fake: fake engine switched off" in err


def test_rm(capsys: pytest.CaptureFixture[str]) -> None:
    planted(name="one")
    planted(name="two")
    code, out, err = run_cli(capsys, "rm", "one", "two", "three")
    assert code == 125 and out.split() == ["one", "two"] and "'three'" in err
    assert FakeBackend.sandboxes == {}
    assert run_cli(capsys, "rm", "-f", "three")[0] == 0


# gc --------------------------------------------------------------------------------
def test_gc_reaps_dead_owners_and_keeps_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    orphan = planted(dead_owner(), name="orphan")
    planted(name="alive")
    planted({MANAGED: "no", **dead_owner()}, name="foreign")
    code, out, _ = run_cli(capsys, "gc", "--dry-run")
    assert (code, out) == (0, f"would remove fake/orphan ({orphan.id[:12]})\n")
    assert "orphan" in FakeBackend.sandboxes
    code, out, _ = run_cli(capsys, "gc", "--json")
    report = json.loads(out)
    assert code == 0 and [entry["name"] for entry in report["removed"]] == ["orphan"]
    assert report["failures"] == {} and report["dry_run"] is False
    assert set(FakeBackend.sandboxes) == {"alive", "foreign"}
    assert run_cli(capsys, "gc")[2] == "sandboxer: nothing to remove\n"


def test_label_filters(capsys: pytest.CaptureFixture[str]) -> None:
    planted({**dead_owner(), "job": "7"}, name="tagged")
    planted(dead_owner(), name="untagged")
    assert run_cli(capsys, "ls", "-q", "--label", "job=7")[1] == "tagged\n"
    assert run_cli(capsys, "gc", "-l", "job=7")[1].startswith("removed fake/tagged ")
    assert set(FakeBackend.sandboxes) == {"untagged"}
    assert run_cli(capsys, "ls", "-l", "job")[0] == 2


def test_gc_treats_a_reused_owner_pid_as_dead() -> None:
    # Our pid, but another start time: the pid was reused by this process.
    here = owner_identity(os.getpid())
    assert here is not None
    boot, namespace, pid, _ = here.split(":")
    planted({OWNER: f"{boot}:{namespace}:{pid}:1"}, name="ancient")
    assert [info.name for info in sandboxer.gc()] == ["ancient"]


def test_gc_older_than_and_sessions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hour_ago = f"{time.time() - 3600:.3f}"
    planted({CREATED_AT: hour_ago, SESSION: "old-run"}, name="old")
    planted({SESSION: "old-run"}, name="fresh-same-session")
    planted(name="fresh")
    assert [i.name for i in sandboxer.gc(older_than=1800, dry_run=True)] == ["old"]
    assert {i.name for i in sandboxer.gc(session="old-run", dry_run=True)} == {
        "old",
        "fresh-same-session",
    }
    old = sandboxer.gc(older_than=1800, session="old-run", dry_run=True)
    assert [i.name for i in old] == ["old"]
    monkeypatch.setenv("SANDBOXER_SESSION", "old-run")
    code, out, err = run_cli(capsys, "gc", "--dry-run")
    assert code == 0 and "only session old-run" in err and out.count("would remove") == 2
    code, out, _ = run_cli(capsys, "gc", "--all-sessions", "--older-than", "30m")
    assert out.startswith("removed fake/old ")
    assert set(FakeBackend.sandboxes) == {"fresh-same-session", "fresh"}


def test_gc_goes_on_past_failures_and_exits_125(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    planted(dead_owner(), name="stuck")
    planted(dead_owner(), name="loose")
    real_remove = FakeBackend.remove

    def remove(self: FakeBackend, name: str, launch: str) -> None:
        if name == "stuck":
            raise sandboxer.EngineError("engine said no")
        real_remove(self, name, launch)

    monkeypatch.setattr(FakeBackend, "remove", remove)
    with pytest.raises(sandboxer.GcIncomplete) as failure:
        sandboxer.gc(dry_run=False)
    assert [i.name for i in failure.value.removed] == ["loose"]
    assert failure.value.failures == {"fake/stuck": "engine said no"}
    code, _, err = run_cli(capsys, "gc")
    assert code == 125 and "fake/stuck: engine said no" in err


def test_gc_rejects_a_negative_bound() -> None:
    with pytest.raises(sandboxer.InvalidSpec, match="older_than"):
        sandboxer.gc(older_than=-1)


# select, doctor, profiles ----------------------------------------------------------
def test_select(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "select") == (0, "fake\n", "")
    code, out, _ = run_cli(capsys, "select", "--explain")
    assert code == 0 and out.startswith("selected fake: ")
    code, out, _ = run_cli(capsys, "select", "--json", "--kind", "app")
    data = json.loads(out)
    assert data["backend"] == "fake" and data["candidates"] == ["fake"]
    assert data["reasons"] and data["rejected"] == {}
    code, _, err = run_cli(capsys, "select", "--kind", "vm")
    assert code == 125 and "no backend can run this spec" in err


class FakeReport:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def render(self) -> str:
        return "all good" if self.ok else "broken"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok}


@pytest.mark.parametrize("ok, code", [(True, 0), (False, 1)])
def test_doctor_exit_code_follows_the_report(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, ok: bool, code: int
) -> None:
    asked: list[Any] = []
    module = types.SimpleNamespace(diagnose=lambda names: asked.append(names) or FakeReport(ok))
    monkeypatch.setitem(sys.modules, "sandboxer.doctor", module)
    assert run_cli(capsys, "doctor") == (code, FakeReport(ok).render() + "\n", "")
    assert json.loads(run_cli(capsys, "doctor", "--json", "fake")[1]) == {"ok": ok}
    assert asked == [None, ["fake"]]


def test_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles", "ls")
    assert code == 0 and {"default", "hardened", "strict"} <= {
        line.split()[0] for line in out.splitlines() if line[0] != " "
    }
    code, out, _ = run_cli(capsys, "profiles", "show", "hardened")
    assert code == 0 and "memory:               256MiB" in out and "/tmp=64MiB" in out
    data = json.loads(run_cli(capsys, "profiles", "show", "--json", "strict")[1])
    assert (
        data["name"] == "strict" and data["cap_drop"] == ["ALL"] and "network" in data["controls"]
    )
    assert len(json.loads(run_cli(capsys, "profiles", "ls", "--json")[1])) >= 3
    code, _, err = run_cli(capsys, "profiles", "show", "nope")
    assert code == 2 and "unknown profile 'nope'" in err


# output ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seconds, text",
    [(None, "?"), (-3, "0s"), (59.9, "59s"), (60, "1m"), (7200, "2h"), (3 * 86400 + 5, "3d")],
)
def test_age(seconds: float | None, text: str) -> None:
    assert _output.age(seconds) == text


def test_table_aligns_columns() -> None:
    assert _output.table(("A", "LONGER"), [["wide-cell", "x"], ["y", "z"]]) == (
        "A          LONGER\nwide-cell  x\ny          z"
    )


# completion --------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    "words, expected",
    [
        (["ru"], {"run"}),
        (["lo"], {"logs"}),
        (["run", "--pull", ""], {"always", "missing", "never"}),
        (["cp", "--o"], {"--overwrite"}),
        (["run", "--net"], {"--network"}),
        (["run", "--network", ""], {"none", "isolated", "bridge"}),
        (["network", ""], {"create", "ls", "rm"}),
        (["network", "create", "--int"], {"--internal"}),
        (["images", ""], {"pull", "build", "ls", "inspect", "rm", "prune"}),
        (["gc", "--all"], {"--all-sessions"}),
        (["completion", ""], {"bash", "zsh", "fish"}),
        (["run", "--kind", "s"], {"system"}),
        (["run", "--", "l"], set()),  # the sandbox's command: left to the shell's default
    ],
)
def test_bash_completion(words: list[str], expected: set[str]) -> None:
    script = _completion.bash_script(build_parser())
    quoted = " ".join(f"'{word}'" for word in ["sandboxer", *words])
    probe = (
        f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _sandboxer_complete; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert set(result.stdout.split()) == expected


def test_completion_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "completion", "bash")
    assert code == 0 and "complete -o default -F _sandboxer_complete sandboxer" in out
    assert run_cli(capsys, "completion", "zsh")[1].startswith("autoload -U +X bashcompinit")
    assert run_cli(capsys, "completion", "--list", "backends")[1] == "fake\n"
    assert run_cli(capsys, "completion")[0] == 2
