"""`run` with docker-run habits, and the commands around detached sandboxes (logs, cp,
inspect, top, exec/rm --json), over the in-memory fake backend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import types
from pathlib import Path
from typing import Any

import attrs
import pytest

import sandboxer
from sandboxer._labels import KEEP
from sandboxer.cli import _copy, _fish, _logs, _run, _words, build_parser, main
from sandboxer.cli._inspect import parse_top, printable
from sandboxer.cli._run_argv import canonical, canonical_argv, run_parser, value_options
from sandboxer.cli._spec import spec_from
from sandboxer.testing import FakeBackend

# Every command sees the fake backend alone (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("only_fake_engines")


def parse(*argv: str) -> Any:
    parser = build_parser()
    return parser.parse_args(canonical_argv(parser, argv))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def command(args: Any) -> list[str]:
    return _run.command_words(args.argv)


# parsing -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, image, words",
    [
        (["alpine", "echo", "hi"], "alpine", ["echo", "hi"]),
        (["--", "sh", "-c", "echo hello"], "sandboxer/minimal", ["sh", "-c", "echo hello"]),
        (["--rm", "sandboxer/debian"], "sandboxer/debian", []),
        (["alpine"], "alpine", []),
        ([], "sandboxer/minimal", []),
        # Words after the image are the command's, options or not.
        (["alpine", "ls", "-e", "--rm", "-d"], "alpine", ["ls", "-e", "--rm", "-d"]),
        (["alpine", "--", "echo", "x"], "alpine", ["echo", "x"]),
        (["alpine", "--", "--", "x"], "alpine", ["--", "x"]),
        (["--", "-x"], "sandboxer/minimal", ["-x"]),
        (["-", "x"], "-", ["x"]),  # not an option: the image (refused by the spec later)
        # Option values are never the image.
        (["--name", "box", "--network", "bridge", "alpine", "id"], "alpine", ["id"]),
        (["--network=bridge", "-ebox=1", "alpine", "id"], "alpine", ["id"]),
        (["-w", "/tmp", "-u", "1000", "alpine"], "alpine", []),
        # --image names the image: every word after the options is the command.
        (["--image", "alpine", "echo", "-n"], "alpine", ["echo", "-n"]),
        (["--image=alpine", "echo"], "alpine", ["echo"]),
        (["--ima", "alpine", "echo"], "alpine", ["echo"]),  # argparse's abbreviations
        (["--image", "alpine", "--", "echo"], "alpine", ["echo"]),
    ],
)
def test_run_reads_options_then_image_then_command(
    argv: list[str], image: str, words: list[str]
) -> None:
    args = parse("run", *argv)
    assert (args.image, command(args)) == (image, words)


def test_docker_flag_habits() -> None:
    args = parse("run", "-it", "--", "sh")
    assert (args.interactive, args.tty, command(args)) == (True, True, ["sh"])
    args = parse("run", "-dP", "alpine")
    assert (args.detach, args.publish_all, args.image) == (True, True, "alpine")
    args = parse("run", "-ite", "A=1", "alpine", "sh")
    assert (args.interactive, args.tty, args.env, command(args)) == (True, True, ["A=1"], ["sh"])
    args = parse(
        "run", "-e", "A=1", "-v", "/tmp:/data:ro", "sandboxer/debian", "python3", "-c", "print(1)"
    )
    assert (args.env, args.mounts, args.image) == (["A=1"], ["/tmp:/data:ro"], "sandboxer/debian")
    assert command(args) == ["python3", "-c", "print(1)"]
    args = parse("--debug", "run", "--rm", "alpine", "true")
    assert (args.debug, args.rm, args.detach, command(args)) == (True, True, False, ["true"])


def test_canonical_form() -> None:
    options = value_options(run_parser(build_parser()))
    assert options["-e"] and options["--entrypoint"] and not options["-d"]
    assert canonical(["-d", "img", "x"], options) == ["-d", "--image", "img", "--", "x"]
    assert canonical(["-e", "A", "--", "x"], options) == ["-e", "A", "--", "x"]
    assert canonical(["-e"], options) == ["-e", "--"]  # argparse reports the missing value
    assert canonical_argv(build_parser(), ["exec", "box", "x"]) == ["exec", "box", "x"]


def test_exec_takes_the_command_after_the_name() -> None:
    assert command(parse("exec", "box", "ls", "-l")) == ["ls", "-l"]
    args = parse("exec", "-e", "A=1", "box", "--", "sh")
    assert (args.sandbox, args.env, command(args)) == ("box", ["A=1"], ["sh"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-it", "alpine", "sh"], "-t: the input device is not a TTY"),
        (["-d", "-i", "alpine"], "-i: a detached sandbox has no stdin"),
        (["-d", "--timeout", "3", "alpine"], "--timeout: applies to a foreground command"),
        (["--json", "alpine", "true"], "--json: prints the detached sandbox"),
        (["sandboxer/minimal"], "COMMAND: nothing to run: give a command after the image"),
        (["--env-file", "/no/such/file", "--", "true"], "--env-file: cannot read /no/such/file"),
        (["-l", "sandboxer.x=1", "--", "true"], "-l: the prefix 'sandboxer.' is reserved"),
        (["--memory", "lots", "--", "true"], "--memory: "),
        (["-p", "70000", "--", "true"], "-p: must be a port in 1-65535"),
        (["-d", "--entrypoint", "a\0b"], "--entrypoint: contains a NUL byte"),
    ],
)
def test_refusals_name_the_flag_before_any_engine_is_touched(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    def no_launch(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("launched")

    monkeypatch.setattr(_run, "launch", no_launch)
    code, out, err = run_cli(capsys, "run", "--backend", "fake", *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"sandboxer: error: {message}"), err


def test_detach_and_rm_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "-d", "--rm", "alpine"])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


# run ---------------------------------------------------------------------------------
def test_run_image_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "run", "--backend", "fake", "sandboxer/minimal", "sh", "-c", "echo hi; exit 3"
    )
    assert (code, out, err) == (3, "hi\n", "")
    assert FakeBackend.sandboxes == {}


def test_foreground_runs_through_exec_in_an_idle_sandbox(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[sandboxer.SandboxSpec] = []

    def launch(spec: sandboxer.SandboxSpec) -> sandboxer.Sandbox:
        launched.append(spec)
        return sandboxer.launch(spec)

    monkeypatch.setattr(_run, "launch", launch)
    assert run_cli(
        capsys, "run", "--backend", "fake", "--entrypoint", "echo", "sandboxer/minimal", "a"
    )[:2] == (
        0,
        "a\n",
    )
    assert launched[0].entrypoint == () and launched[0].command is None
    assert not launched[0].keep


def test_detached_command_is_the_main_process(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "run", "--backend", "fake", "-d", "--name", "d1", "sandboxer/minimal", "sleep", "9"
    )
    assert (code, out) == (0, "d1\n")
    plan = FakeBackend.sandboxes["d1"].plan
    assert (plan.command, plan.entrypoint, plan.labels[KEEP]) == (("sleep", "9"), None, "true")
    code, out, _ = run_cli(
        capsys, "run", "--backend", "fake", "-d", "--json", "--entrypoint", "", "sandboxer/minimal"
    )
    launched = json.loads(out)
    assert code == 0 and launched["backend"] == "fake"
    box = FakeBackend.sandboxes[launched["name"]]
    assert box.id == launched["id"] and box.plan.entrypoint == () and box.plan.command is None


def test_env_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FROM_HOST", "host value")
    monkeypatch.delenv("NOT_SET", raising=False)
    env_file = tmp_path / "vars.env"
    env_file.write_text(
        '# a comment\n\n  SPACED=  kept as is \nQUOTED="q"\nFROM_HOST\nNOT_SET\nOVER=file\n'
    )
    args = parse("run", "--env-file", str(env_file), "-e", "OVER=flag", "--", "env")
    assert dict(spec_from(args).env) == {
        "SPACED": "  kept as is ",
        "QUOTED": '"q"',
        "FROM_HOST": "host value",
        "OVER": "flag",
    }
    for text, why in [("=x\n", "line 1: no variable name"), ("A B=1\n", "line 1: 'A B' contains")]:
        env_file.write_text(text)
        code, _, err = run_cli(capsys, "run", "--env-file", str(env_file), "--", "true")
        assert code == 2 and f"--env-file: {env_file} {why}" in err


def test_read_only_and_cap_add_derive_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_from(parse("run", "--profile", "default", "--read-only", "--cap-add", "net_admin"))
    assert spec.profile.name == "default+flags" and spec.profile.read_only_root
    assert spec.profile.cap_add == ("NET_ADMIN",)
    assert spec_from(parse("run")).profile.name == "hardened"
    spec = spec_from(parse("run", "--cap-add", "CAP_NET_BIND_SERVICE"))
    assert spec.profile.cap_add == ("NET_BIND_SERVICE",) and "ALL" in spec.profile.cap_drop
    code, _, err = run_cli(
        capsys,
        "run",
        "--backend",
        "fake",
        "--profile",
        "strict",
        "--cap-add",
        "SYS_ADMIN",
        "--",
        "true",
    )
    assert code == 2 and "error: --cap-add: SYS_ADMIN may not be added" in err
    assert "(allowed: NET_BIND_SERVICE)" in err


def test_pull_policy_reaches_the_spec() -> None:
    assert spec_from(parse("run", "--pull", "never", "alpine")).pull == sandboxer.PullPolicy.NEVER
    assert spec_from(parse("run", "alpine")).pull == sandboxer.PullPolicy.MISSING


def test_unenforced_controls_are_advised_as_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backend that enforces nothing: the library's own refusal, said in the CLI's words.
    monkeypatch.setattr(
        FakeBackend, "capabilities", attrs.evolve(FakeBackend.capabilities, controls={})
    )
    code, _, err = run_cli(capsys, "run", "--backend", "fake", "--profile", "strict", "--", "true")
    controls = sandboxer.load_profile("strict").controls()
    advice = " ".join(f"--allow-unenforced {control}" for control in sorted(controls))
    assert code == 125 and f"add {advice} to accept that" in err
    assert "allow_unenforced" not in err
    allowed = [word for control in controls for word in ("--allow-unenforced", control)]
    code, out, _ = run_cli(
        capsys, "run", "--backend", "fake", "--profile", "strict", *allowed, "--", "echo", "ok"
    )
    assert (code, out) == (0, "ok\n")


@pytest.mark.parametrize(
    "field, flag",
    [
        ("Mount.source", "-v"),
        ("mounts[1].target", "-v"),
        ("PortMapping.host_ip", "-p"),
        ("ports[0].guest_port", "-p"),
        ("env['A B']", "-e"),
        ("labels['x']", "-l"),
        ("Resources.memory", "--memory"),
        ("profile.cap_add", "--cap-add"),
        ("allow_unenforced", "--allow-unenforced"),
        ("host_path", "HOST_PATH"),
        ("something_else", "something_else"),
    ],
)
def test_fields_are_named_by_their_flags(field: str, flag: str) -> None:
    assert _words.flag(field) == flag


def test_library_advice_in_cli_words() -> None:
    text = "x; pass allow_unenforced=['seccomp', 'network'] to accept that; more than "
    assert _words.advice(text + "max_start_seconds=5") == (
        "x; add --allow-unenforced seccomp --allow-unenforced network to accept that; "
        "more than --max-start-seconds 5"
    )


# exec and rm --json ------------------------------------------------------------------
def test_exec_json(capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(capsys, "run", "--backend", "fake", "-d", "--name", "box")
    code, out, _ = run_cli(
        capsys, "exec", "--json", "box", "sh", "-c", "echo o; echo e >&2; exit 5"
    )
    result = json.loads(out)
    assert code == 5 and (result["exit_code"], result["stdout"], result["stderr"]) == (
        5,
        "o\n",
        "e\n",
    )
    assert result["timed_out"] is False and result["duration"] >= 0


def test_rm_json(capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(capsys, "run", "--backend", "fake", "-d", "--name", "gone")
    code, out, err = run_cli(capsys, "rm", "--json", "gone", "never-was")
    report = json.loads(out)
    assert (
        code == 125 and report["removed"] == ["gone"] and list(report["failures"]) == ["never-was"]
    )
    assert "never-was" in err and FakeBackend.sandboxes == {}
    assert json.loads(run_cli(capsys, "rm", "--json", "-f", "never-was")[1]) == {
        "removed": [],
        "failures": {},
    }


# logs --------------------------------------------------------------------------------
def test_logs(capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(capsys, "run", "--backend", "fake", "-d", "--name", "talker")
    run_cli(capsys, "exec", "talker", "echo", "one")
    assert run_cli(capsys, "logs", "talker") == (0, "echo one", "")
    FakeBackend.sandboxes["talker"].state = sandboxer.SandboxState.STOPPED
    assert run_cli(capsys, "logs", "-f", "talker") == (0, "echo one", "")
    code, _, err = run_cli(capsys, "logs", "nobody")
    assert code == 125 and "nobody" in err


@pytest.mark.parametrize(
    "printed, current, new",
    [
        ("", "abc", "abc"),
        ("abc", "abcdef", "def"),
        ("abc", "abc", ""),
        ("x" * 10 + "tail", "xxtail-more", "-more"),  # the read's head was trimmed
        ("gone", "all new", "all new"),  # nothing in common: shown whole
    ],
)
def test_new_text(monkeypatch: pytest.MonkeyPatch, printed: str, current: str, new: str) -> None:
    monkeypatch.setattr(_logs, "ANCHOR", 4)
    assert _logs.new_text(printed, current) == new


def test_follow_prints_each_part_once_and_ends_with_the_sandbox() -> None:
    reads = iter(["a", "ab", "abc", "abcd"])
    states = iter([sandboxer.SandboxState.RUNNING] * 3 + [sandboxer.SandboxState.STOPPED])

    class Box:
        @property
        def state(self) -> sandboxer.SandboxState:
            return next(states)

        def logs(self) -> str:
            return next(reads)

    written: list[str] = []
    sleeps: list[float] = []
    _logs.follow(Box(), written.append, sleeps.append)  # type: ignore[arg-type]
    assert written == ["a", "b", "c", "d"] and len(sleeps) == 3


def test_follow_ends_when_the_sandbox_is_removed() -> None:
    box = types.SimpleNamespace(
        state=None, logs=lambda: (_ for _ in ()).throw(sandboxer.SandboxNotFound("x"))
    )
    _logs.follow(box, print, lambda _: None)  # type: ignore[arg-type]


# cp ----------------------------------------------------------------------------------
def test_cp_both_ways(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run_cli(capsys, "run", "--backend", "fake", "-d", "--name", "files")
    (tmp_path / "in.txt").write_text("payload")
    assert run_cli(capsys, "cp", str(tmp_path / "in.txt"), "files:/tmp/") == (0, "", "")
    assert FakeBackend.sandboxes["files"].files["/tmp/in.txt"] == b"payload"
    assert run_cli(capsys, "cp", str(tmp_path / "in.txt"), "files:/tmp/renamed")[0] == 0
    assert FakeBackend.sandboxes["files"].files["/tmp/renamed"] == b"payload"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert run_cli(capsys, "cp", "files:/tmp/renamed", str(out_dir))[0] == 0  # into the dir
    assert (out_dir / "renamed").read_text() == "payload"
    code, _, err = run_cli(capsys, "cp", "files:/tmp/renamed", str(out_dir / "renamed"))
    assert code == 2 and "exists; add --overwrite" in err

    assert (
        run_cli(capsys, "cp", "--overwrite", "files:/tmp/in.txt", str(out_dir / "renamed"))[0] == 0
    )


@pytest.mark.parametrize(
    "source, destination, message",
    [
        ("a", "b", "cp: one of SRC and DST is NAME:/path"),
        ("x:/a", "y:/b", "cp: one of SRC and DST is NAME:/path"),
        ("a", "box:relative", "DST: the path in the sandbox must be absolute"),
        ("", "box:/x", "SRC: expected a host path or NAME:/path"),
        ("/no/such/file", "box:/x", "SRC: does not exist: /no/such/file"),
        ("box:/tmp", "/", "DST: /tmp exists; add --overwrite"),
    ],
)
def test_cp_refusals_come_before_any_engine_is_asked(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    destination: str,
    message: str,
) -> None:
    def no_engine(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("asked an engine")

    monkeypatch.setattr(_copy, "attach", no_engine)
    code, _, err = run_cli(capsys, "cp", source, destination)
    assert code == 2 and f"error: {message}" in err


def test_cp_reads_dot_slash_paths_with_colons_as_host_paths(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_cli(capsys, "run", "--backend", "fake", "-d", "--name", "colons")
    monkeypatch.chdir(tmp_path)
    Path("a:b").write_text("c")
    assert run_cli(capsys, "cp", "./a:b", "colons:/tmp/ab")[0] == 0
    assert FakeBackend.sandboxes["colons"].files["/tmp/ab"] == b"c"


# inspect and top ---------------------------------------------------------------------
def test_inspect(capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(capsys, "run", "--backend", "fake", "-d", "--name", "seen", "-l", "team=qa")
    code, out, _ = run_cli(capsys, "inspect", "--json", "seen")
    details = json.loads(out)
    assert code == 0 and (details["name"], details["backend"], details["state"]) == (
        "seen",
        "fake",
        "running",
    )
    assert details["labels"]["team"] == "qa" and details["labels"][KEEP] == "true"
    assert details["owner_pid"] == os.getpid() and details["id"] == FakeBackend.sandboxes["seen"].id
    code, out, _ = run_cli(capsys, "inspect", "seen")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["FIELD", "VALUE"]
    assert ["state", "running"] in [line.split() for line in lines]
    assert ["label", "team", "qa"] in [line.split() for line in lines]


def test_parse_top_leaves_out_its_shell_and_bad_lines() -> None:
    output = (
        "42\n"
        "0 1 (sleep) S 0 1 1\n"
        "1000 42 (sh) R 1 42 42\n"
        "1000 7 (odd) name) S 1 7 7\n"
        "garbage\n"
        "1000 x (sh) S y\n"
    )
    assert [(p.pid, p.ppid, p.uid, p.state, p.command) for p in parse_top(output)] == [
        (1, 0, "0", "S", "sleep"),
        (7, 1, "1000", "S", "odd) name"),
    ]
    assert printable("a\x1b[2Jb") == "a?[2Jb"


# completion --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, expected",
    [
        ("sandboxer ", {"logs", "cp", "inspect", "top", "run", "exec", "shell"}),
        ("sandboxer run --net", {"--network"}),
        ("sandboxer run --pull ", {"always", "missing", "never"}),
        ("sandboxer images ", {"pull", "build", "ls", "inspect", "rm", "prune"}),
        ("sandboxer logs -", {"-f", "--follow", "-h", "--help"}),
        ("sandboxer completion ", {"bash", "zsh", "fish"}),
        ("sandboxer --debug images l", {"ls"}),
    ],
)
def test_fish_completion(line: str, expected: set[str], tmp_path: Path) -> None:
    fish = shutil.which("fish")
    assert fish, "fish is needed for this test: apt-get install -y fish"
    script = tmp_path / "sandboxer.fish"
    script.write_text(_fish.script(build_parser()))
    probe = f"source {script}; complete -C {json.dumps(line)}"
    result = subprocess.run([fish, "-c", probe], capture_output=True, text=True, check=True)
    found = {row.split("\t")[0] for row in result.stdout.splitlines()}
    assert expected <= found if line == "sandboxer " else found == expected


def test_fish_after_double_dash_leaves_the_words_to_fish(tmp_path: Path) -> None:
    fish = shutil.which("fish")
    assert fish, "fish is needed for this test: apt-get install -y fish"
    script = tmp_path / "sandboxer.fish"
    script.write_text(_fish.script(build_parser()))
    probe = f"source {script}; cd {tmp_path}; complete -C 'sandboxer run -- sandboxer.f'"
    result = subprocess.run([fish, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["sandboxer.fish"]


def test_completion_fish_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "completion", "fish")
    assert code == 0 and "function __sandboxer_path" in out and "complete -c sandboxer" in out
