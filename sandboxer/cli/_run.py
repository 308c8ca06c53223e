"""`run` (launch, run a command, remove; or launch detached) and `exec` (run a command in
an existing sandbox), with `docker run` habits.

A foreground `run` launches an idle sandbox and runs the command in it (the image's
Entrypoint and Cmd combined with COMMAND under Docker's rules), so that its output
streams here and its exit code comes back. A detached one (`-d`) makes the
command the sandbox's main process, as Docker does: `sandboxer logs` shows its output.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import attrs

from sandboxer import (
    ExecStream,
    InvalidSpec,
    Sandbox,
    SandboxSpec,
    attach,
    get_backend,
    launch,
    select,
)

from . import _output, _spec, _terminal
from ._run_argv import command_words

RUN_USAGE = """\
%(prog)s [OPTIONS] IMAGE [COMMAND [ARG...]]
       %(prog)s [OPTIONS] -- COMMAND [ARG...]   (on --image, default sandboxer/minimal)"""


def _command_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="pass our stdin (read to its end) to the command",
    )
    parser.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="run the command on a terminal (-it: ours passed through to it, in raw mode)",
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
    run.add_argument(
        "-P",
        "--publish-all",
        action="store_true",
        help="publish every port the image exposes on a free loopback port",
    )
    run.add_argument(
        "--hostname", metavar="NAME", help="the sandbox's host name (default: its name)"
    )
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

    shell = commands.add_parser(
        "shell",
        usage="%(prog)s [OPTIONS] NAME [COMMAND [ARG...]]",
        help="open a terminal in a running sandbox (a shell by default)",
        description=f"Run COMMAND (default {_terminal.SHELL}) on a terminal in one of our "
        "running sandboxes (one made with `run -d`, say), this terminal passed through to "
        "it, as `exec -it` does; the exit code is the command's.",
    )
    shell.add_argument("sandbox", metavar="NAME")
    _spec.env_option(shell)
    shell.add_argument("-w", "--workdir", metavar="DIR", help="working directory")
    shell.add_argument("-u", "--user", metavar="USER", help="user[:group] or uid[:gid]")
    shell.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    shell.set_defaults(handler=shell_command, interactive=True, tty=True, timeout=None, json=False)


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


def command_here(
    sandbox: Sandbox, argv: list[str], args: argparse.Namespace, **options: Any
) -> int:
    """Run the command with its output here as it arrives (on a terminal with -t)."""
    if not args.tty:
        return stream_command(sandbox, argv, args, **options)
    code = _terminal.run(
        sandbox, argv, interactive=args.interactive, timeout=args.timeout, **options
    )
    return exit_code(code)


def _entrypoint(args: argparse.Namespace) -> tuple[str, ...] | None:
    # Docker's --entrypoint is one executable, never split; '' clears the image's.
    if args.entrypoint is None:
        return None
    return (args.entrypoint,) if args.entrypoint else ()


def _launch_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {"hostname": args.hostname, "publish_all": args.publish_all}


def _foreground(spec: SandboxSpec, args: argparse.Namespace) -> tuple[SandboxSpec, list[str]]:
    """The spec on the backend chosen for it, and the command to run in it: the image's
    Entrypoint and Cmd with COMMAND, as Docker combines them."""
    backend = select(spec).backend
    config = get_backend(backend).image_config(spec.image, spec.pull)
    command = tuple(command_words(args.argv)) or None
    argv = config.main_process(command, _entrypoint(args)) or ()
    return attrs.evolve(spec, backend=backend), list(argv)


def run_command(args: argparse.Namespace) -> int:
    command = command_words(args.argv)
    if args.detach:
        return _run_detached(args, command)
    if args.json:
        raise InvalidSpec("--json", "prints the detached sandbox: use it with -d")
    _terminal.require_terminal(args.tty and args.interactive)
    # Idle (no entrypoint, no command): the command runs through exec, streamed here.
    spec, argv = _foreground(_spec.spec_from(args, entrypoint=(), **_launch_fields(args)), args)
    if not argv and args.tty:
        argv = [_terminal.SHELL]
    if not argv:
        raise InvalidSpec(
            "COMMAND",
            "nothing to run: give a command after the image (or after --), or an image "
            "with an Entrypoint or Cmd",
        )
    with _output.progress(f"launching {spec.image}"):
        sandbox = launch(spec)
    with sandbox:
        return command_here(sandbox, argv, args)


def _run_detached(args: argparse.Namespace, command: list[str]) -> int:
    if args.tty:
        raise InvalidSpec(
            "-t",
            "a detached sandbox's main process gets no terminal: `sandboxer shell NAME` "
            "opens one in it later",
        )
    if args.interactive:
        raise InvalidSpec("-i", "a detached sandbox has no stdin to pass: drop -i or -d")
    if args.timeout is not None:
        raise InvalidSpec("--timeout", "applies to a foreground command: drop it or -d")
    spec = _spec.spec_from(
        args,
        command=command or None,
        entrypoint=_entrypoint(args),
        keep=True,
        **_launch_fields(args),
    )
    with _output.progress(f"launching {spec.image}"):
        sandbox = launch(spec)
    if args.json:
        _output.print_json(_output.launched_dict(sandbox))
    else:
        print(sandbox.name)
    return 0


def exec_command(args: argparse.Namespace) -> int:
    argv = command_words(args.argv)
    if not argv:
        raise InvalidSpec("COMMAND", "give the command after the sandbox's name")
    return _exec_in(args, argv)


def shell_command(args: argparse.Namespace) -> int:
    return _exec_in(args, command_words(args.argv) or [_terminal.SHELL])


def _exec_in(args: argparse.Namespace, argv: list[str]) -> int:
    if args.json and args.tty:
        raise InvalidSpec("--json", "collects the output, which a terminal does not: drop -t")
    _terminal.require_terminal(args.tty and args.interactive)
    sandbox = attach(args.sandbox)
    env = _spec.pairs(args.env, "--env", from_environ=True)
    options: dict[str, Any] = {"env": env, "workdir": args.workdir, "user": args.user}
    if not args.json:
        return command_here(sandbox, argv, args, **options)
    result = sandbox.exec(argv, timeout=args.timeout, stdin=_stdin(args), **options)
    _output.print_json(_output.result_dict(result))
    return exit_code(result.exit_code)
