"""`profiles ls` and `profiles show NAME`."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

import attrs

from sandboxer import Profile, builtin_profiles, load_profile
from sandboxer.backend import SeccompPolicy

from . import _output


def register(commands: Any) -> None:
    profiles = commands.add_parser("profiles", help="list and show security profiles")
    actions = profiles.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("ls", help="the built-in profiles and what they enforce")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=ls_command)
    show = actions.add_parser("show", help="every setting of one profile")
    show.add_argument("profile", metavar="NAME", help="a built-in name or a .toml path")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=show_command)


def profile_dict(profile: Profile) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, SeccompPolicy):
            return value.summary()
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if hasattr(value, "items"):
            return {key: plain(item) for key, item in value.items()}
        return value

    data = {field.name: plain(getattr(profile, field.name)) for field in attrs.fields(Profile)}
    data["controls"] = list(profile.controls())
    return data


def _summary(profile: Profile) -> str:
    first = profile.description.split(". ")[0].split(":")[0]
    return first.rstrip(".")


def ls_command(args: argparse.Namespace) -> int:
    profiles = [load_profile(name) for name in builtin_profiles()]
    if args.json:
        _output.print_json([profile_dict(profile) for profile in profiles])
        return 0
    width = max(len(p.name) for p in profiles) + 2
    for profile in profiles:
        print(f"{profile.name:{width}}{_summary(profile)}")
        print(f"{'':{width}}enforces: {', '.join(profile.controls()) or 'nothing'}")
    return 0


def show_command(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    data = profile_dict(profile)
    if args.json:
        _output.print_json(data)
        return 0
    print(f"{profile.name}")
    print(textwrap.indent(textwrap.fill(profile.description, 88), "  "))
    for key, value in data.items():
        if key in ("name", "description"):
            continue
        if key in _SIZES:
            value = _sizes(value)
        print(f"{key + ':':22}{_format(value)}")
    return 0


_SIZES = ("memory", "tmpfs")


def _size(count: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count % size == 0:
            return f"{count // size}{unit}"
    return str(count)


def _sizes(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _size(item) for key, item in value.items()}
    return None if value is None else _size(value)


def _format(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)
