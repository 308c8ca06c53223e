"""The `sandboxer` command: a thin layer over the public API, with `docker run` habits.

Exit codes: 0 success; the command's own code for `run` and `exec` (128+N when killed by
signal N, 137 on --timeout); 1 when `doctor` finds a problem; 2 for bad usage or an
invalid spec; 125 when sandboxer or an engine fails; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from sandboxer import InvalidSpec, SandboxError, __version__

from . import (
    _completion,
    _copy,
    _engines,
    _images,
    _inspect,
    _logs,
    _manage,
    _networks,
    _output,
    _profiles,
    _run,
    _volumes,
    _words,
)
from ._output import logger
from ._run_argv import canonical_argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_output.PROG,
        description="Launch isolated sandboxes on Docker, Incus/LXC and libvirt/QEMU.",
        epilog="Run `sandboxer COMMAND --help` for a command's options.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="debug logging, and tracebacks on errors"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = (
        *(_run, _manage, _volumes, _networks, _logs, _copy),
        *(_inspect, _engines, _images, _profiles, _completion),
    )
    for module in modules:
        module.register(commands)
    return parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C does, so a sandbox this command launched is removed.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(canonical_argv(parser, sys.argv[1:] if argv is None else argv))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{_output.PROG}: %(levelname)s %(message)s"))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG if args.debug else logging.WARNING)
    # Signal handlers can only be set from the main thread (main() may run elsewhere in tests).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        code: int = args.handler(args)
        return code
    except InvalidSpec as exc:
        _error(args, exc)
        return _output.USAGE
    except SandboxError as exc:
        _error(args, exc)
        return _output.ENGINE_FAILURE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # The reader went away (`sandboxer ls | head`): stop quietly, as shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as exc:
        if args.debug:
            raise
        _output.error(f"internal error: {type(exc).__name__}: {exc} (--debug shows where)")
        return _output.ENGINE_FAILURE
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        logger.setLevel(level)
        logger.removeHandler(handler)


def _error(args: argparse.Namespace, exc: BaseException) -> None:
    if args.debug:
        logger.exception("%s failed", args.command)
    _output.error(_words.message(exc))
