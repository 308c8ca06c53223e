"""`run` (launch, run a command, remove; or launch detached) and `exec` (run a command in
an existing sandbox), with `docker run` habits.

A foreground `run` launches an idle sandbox and runs the command in it, so that its
output streams here and its exit code comes back. A detached one (`-d`) makes the
command the sandbox's main process, as Docker does: `sandboxer logs` shows its output.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sandboxer import ExecStream, InvalidSpec, Sandbox, attach, launch

from . import _output, _spec
from ._run_argv import command_words

RUN_USAGE = """\
%(prog)s [OPTIONS] IMAGE [COMMAND [ARG...]]
       %(prog)s [OPTIONS] -- COMMAND [ARG...]   (on --image, default sandboxer/minimal)"""

# Docker flags that sandboxer does not do yet: accepted, then refused with the reason.
NOT_YET = {
    "tty": ("-t/--tty", "TTY sessions are not available yet; -i alone passes stdin"),
    "publish_all": (
        "-P/--publish-all",
        "the image's exposed ports are not known to sandboxer yet; "
        "publish each with -p GUEST (a free host port is picked)",
    ),
    "hostname": ("--hostname", "sandboxes cannot be given a host name yet"),
}


def _command_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="pass our stdin (read to its end) to the command",
    )
    parser.add_argument(
        "-t", "--tty", action="store_true", help="a terminal for the command (not available yet)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="kill the command after this long (exit code 137)",
    )


def _json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def register(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        parents=[_spec.selection_options(), _spec.launch_options()],
        usage=RUN_USAGE,
        help="launch a sandbox, run a command in it, remove it",
        description="Launch a sandbox of IMAGE, run COMMAND in it with its output streamed "
        "here, then remove the sandbox; the exit code is the command's (125: sandboxer "
        "failed). Options go before IMAGE: every word after it belongs to COMMAND. With -d, "
        "COMMAND (else the image's own) is the sandbox's main process and the sandbox stays.",
    )
    lifetime = run.add_mutually_exclusive_group()
    lifetime.add_argument(
        "-d",
        "--detach",
        "--keep",
        dest="detach",
        action="store_true",
        help="leave the sandbox running and print its name (gc keeps it until rm)",
    )
    lifetime.add_argument(
        "--rm", action="store_true", help="remove the sandbox afterwards (the default)"
    )
    _command_options(run)
    run.add_argument("-P", "--publish-all", action="store_true", help="(not available yet)")
    run.add_argument("--hostname", help="(not available yet)")
    _json_option(run, "the detached sandbox (with -d)")
    run.add_argument("argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    run.set_defaults(handler=run_command)

    execute = commands.add_parser(
        "exec",
        usage="%(prog)s [OPTIONS] NAME COMMAND [ARG...]",
        help="run a command in an existing sandbox",
        description="Run COMMAND in one of our sandboxes, found by name, id or id prefix.",
    )
    execute.add_argument("sandbox", metavar="NAME")
    _spec.env_option(execute)
    execute.add_argument("-w", "--workdir", metavar="DIR", help="working directory")
    execute.add_argument("-u", "--user", metavar="USER", help="user[:group] or uid[:gid]")
    _command_options(execute)
    _json_option(execute, "the exit code and the output (collected, not streamed)")
    execute.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    execute.set_defaults(handler=exec_command)


def refuse_unavailable(args: argparse.Namespace) -> None:
    """A usage error for a Docker flag sandboxer cannot honour yet (never ignored)."""
    for dest, (flags, why) in NOT_YET.items():
        if getattr(args, dest, None):
            raise InvalidSpec(flags, why)


def exit_code(code: int | None) -> int:
    """The shell's convention: a command killed by signal N (or a timeout) exits 128+N."""
    code = code if code is not None else 1
    return 128 - code if code < 0 else code


def _stdin(args: argparse.Namespace) -> bytes | None:
    return sys.stdin.buffer.read() if args.interactive else None


def stream_command(
    sandbox: Sandbox, argv: list[str], args: argparse.Namespace, **options: Any
) -> int:
    """Run the command with its output copied to ours as it arrives; its exit code."""
    stream: ExecStream = sandbox.exec_stream(
        argv, timeout=args.timeout, stdin=_stdin(args), **options
    )
    sinks = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for name, chunk in stream:
        sinks[name].write(chunk)
        sinks[name].flush()
    if stream.timed_out:
        _output.note(f"the command ran past --timeout {args.timeout:g}s and was killed")
    return exit_code(stream.exit_code)


def _entrypoint(args: argparse.Namespace) -> tuple[str, ...] | None:
    # Docker's --entrypoint is one executable, never split; '' clears the image's.
    if args.entrypoint is None:
        return None
    return (args.entrypoint,) if args.entrypoint else ()


def run_command(args: argparse.Namespace) -> int:
    refuse_unavailable(args)
    command = command_words(args.argv)
    if args.detach:
        return _run_detached(args, command)
    if args.json:
        raise InvalidSpec("--json", "prints the detached sandbox: use it with -d")
    argv = [*(_entrypoint(args) or ()), *command]
    if not argv:
        raise InvalidSpec(
            "COMMAND",
            "nothing to run: give a command after the image (or after --); "
            "the image's own command runs with -d (see `sandboxer logs NAME`)",
        )
    # Idle (no entrypoint, no command): the command runs through exec, streamed here.
    spec = _spec.spec_from(args, entrypoint=())
    with _output.progress(f"launching {spec.image}"):
        sandbox = launch(spec)
    with sandbox:
        return stream_command(sandbox, argv, args)


def _run_detached(args: argparse.Namespace, command: list[str]) -> int:
    if args.interactive:
        raise InvalidSpec("-i", "a detached sandbox has no stdin to pass: drop -i or -d")
    if args.timeout is not None:
        raise InvalidSpec("--timeout", "applies to a foreground command: drop it or -d")
    spec = _spec.spec_from(args, command=command or None, entrypoint=_entrypoint(args), keep=True)
    with _output.progress(f"launching {spec.image}"):
        sandbox = launch(spec)
    if args.json:
        _output.print_json(_output.launched_dict(sandbox))
    else:
        print(sandbox.name)
    return 0


def exec_command(args: argparse.Namespace) -> int:
    refuse_unavailable(args)
    argv = command_words(args.argv)
    if not argv:
        raise InvalidSpec("COMMAND", "give the command after the sandbox's name")
    sandbox = attach(args.sandbox)
    env = _spec.pairs(args.env, "--env", from_environ=True)
    options: dict[str, Any] = {"env": env, "workdir": args.workdir, "user": args.user}
    if not args.json:
        return stream_command(sandbox, argv, args, **options)
    result = sandbox.exec(argv, timeout=args.timeout, stdin=_stdin(args), **options)
    _output.print_json(_output.result_dict(result))
    return exit_code(result.exit_code)
