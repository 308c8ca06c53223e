"""`images ls` and `images build`: the built-in images every backend builds locally."""

from __future__ import annotations

import argparse
import time
from typing import Any

from sandboxer import CONTROLS, SandboxError, backend_names, launch, probe_all
from sandboxer.images import BUILTIN_IMAGES, IMAGE_VERSION

from . import _output


def register(commands: Any) -> None:
    images = commands.add_parser("images", help="list and build the built-in images")
    actions = images.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("ls", help="the built-in images")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=ls_command)
    build = actions.add_parser(
        "build",
        help="build an image on the engines now instead of at first launch",
        description="Build IMAGE (default: every built-in image) on each engine (default: "
        "every available one) by launching one throwaway sandbox from it.",
    )
    build.add_argument("image", nargs="?", metavar="IMAGE")
    build.add_argument(
        "--backend", action="append", metavar="B", help="only this engine (repeatable)"
    )
    build.set_defaults(handler=build_command)


def ls_command(args: argparse.Namespace) -> int:
    if args.json:
        _output.print_json([{"name": name, "version": IMAGE_VERSION} for name in BUILTIN_IMAGES])
    else:
        rows = [[name, IMAGE_VERSION, "busybox-static, built locally"] for name in BUILTIN_IMAGES]
        print(_output.table(("IMAGE", "VERSION", "FROM"), rows))
    return 0


def build_command(args: argparse.Namespace) -> int:
    states = probe_all(args.backend or backend_names())
    failed = False
    for name, state in states.items():
        if not state.available and args.backend:
            _output.error(f"{name} is unavailable: {state.reason}")
            failed = True
    for backend in (name for name, state in states.items() if state.available):
        for image in [args.image] if args.image else BUILTIN_IMAGES:
            started = time.monotonic()
            try:
                # A backend builds a missing image when a sandbox first needs it.
                with (
                    _output.progress(f"building {image} on {backend}"),
                    launch(
                        image=image,
                        backend=backend,
                        profile="default",
                        network="none",
                        allow_unenforced=CONTROLS,
                    ),
                ):
                    pass
            except SandboxError as exc:
                _output.error(f"{image} on {backend}: {exc}")
                failed = True
                continue
            print(f"{image} ready on {backend} ({time.monotonic() - started:.1f}s)")
    return _output.ENGINE_FAILURE if failed else 0
