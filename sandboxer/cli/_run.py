"""`run` (launch, run a command, remove) and `exec` (run a command in an existing sandbox)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sandboxer import ExecStream, InvalidSpec, Sandbox, attach, launch

from . import _output, _spec


def _command_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="pass our stdin (read to its end) to the command",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="kill the command after this long (exit code 137)",
    )


def register(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        parents=[_spec.selection_options(), _spec.launch_options()],
        help="launch a sandbox, run a command in it, remove it",
        description="Launch a sandbox, run CMD in it with its output streamed here, then "
        "remove the sandbox. The exit code is the command's (125: sandboxer failed).",
    )
    run.add_argument(
        "--keep",
        action="store_true",
        help="leave the sandbox running afterwards (its name goes to stderr)",
    )
    _command_options(run)
    run.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- CMD...",
        help="the command (optional with --keep)",
    )
    run.set_defaults(handler=run_command)

    execute = commands.add_parser(
        "exec",
        help="run a command in an existing sandbox",
        description="Run CMD in one of our sandboxes, found by name, id or id prefix.",
    )
    execute.add_argument("sandbox", metavar="ID_OR_NAME")
    _spec.env_option(execute)
    execute.add_argument("-w", "--workdir", metavar="DIR", help="working directory")
    execute.add_argument("-u", "--user", metavar="USER", help="user[:group] or uid[:gid]")
    _command_options(execute)
    execute.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    execute.set_defaults(handler=exec_command)


def _argv(raw: list[str]) -> list[str]:
    return raw[1:] if raw[:1] == ["--"] else raw


def exit_code(stream: ExecStream) -> int:
    """The shell's convention: a command killed by signal N (or a timeout) exits 128+N."""
    code = stream.exit_code if stream.exit_code is not None else 1
    return 128 - code if code < 0 else code


def stream_command(sandbox: Sandbox, args: argparse.Namespace, **options: Any) -> int:
    """Run the command with its output copied to ours as it arrives; its exit code."""
    stdin = sys.stdin.buffer.read() if args.interactive else None
    stream = sandbox.exec_stream(_argv(args.argv), timeout=args.timeout, stdin=stdin, **options)
    sinks = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for name, chunk in stream:
        sinks[name].write(chunk)
        sinks[name].flush()
    if stream.timed_out:
        _output.note(f"the command ran past --timeout {args.timeout:g}s and was killed")
    return exit_code(stream)


def run_command(args: argparse.Namespace) -> int:
    spec = _spec.spec_from(args)
    if not _argv(args.argv) and not args.keep:
        raise InvalidSpec("run", "nothing to run: give a command after -- (or use --keep)")
    with _output.progress(f"launching {spec.image}"):
        sandbox = launch(spec, keep=args.keep)
    if args.keep:
        try:
            return stream_command(sandbox, args) if _argv(args.argv) else 0
        finally:
            _output.note(f"kept {sandbox.name} on {sandbox.backend} (id {sandbox.id})")
    with sandbox:
        return stream_command(sandbox, args)


def exec_command(args: argparse.Namespace) -> int:
    if not _argv(args.argv):
        raise InvalidSpec("exec", "give the command after --")
    sandbox = attach(args.sandbox)
    env = _spec.pairs(args.env, "--env", from_environ=True)
    return stream_command(sandbox, args, env=env, workdir=args.workdir, user=args.user)
