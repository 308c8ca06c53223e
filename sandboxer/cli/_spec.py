"""The `docker run`-style flags shared by `run` and `select`, and the SandboxSpec they make."""

from __future__ import annotations

import argparse
import os
from typing import Any

from sandboxer import (
    CONTROLS,
    ISOLATION_LEVELS,
    KINDS,
    NETWORKS,
    InvalidSpec,
    Mount,
    PortMapping,
    Profile,
    PullPolicy,
    Requirements,
    Resources,
    SandboxSpec,
    load_profile,
)

from . import _envfile
from ._duration import duration


def selection_options() -> argparse.ArgumentParser:
    """Flags that decide which backend can run the sandbox (shared by run and select)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("sandbox")
    group.add_argument("--backend", metavar="B", help="engine to use (default: the selector picks)")
    group.add_argument(
        "--profile",
        metavar="P",
        default="hardened",
        help="security profile: a built-in name or a .toml path (default: hardened)",
    )
    group.add_argument(
        "--image",
        metavar="I",
        default="sandboxer/minimal",
        help="the image, as the IMAGE argument names it (default: sandboxer/minimal)",
    )
    group.add_argument(
        "-v",
        "--volume",
        dest="mounts",
        metavar="SRC:DST[:ro]",
        action="append",
        default=[],
        help="share a host path, or a volume (SRC without /), into the sandbox (repeatable)",
    )
    group.add_argument(
        "-p",
        "--publish",
        dest="ports",
        metavar="[IP:]HOST:GUEST",
        action="append",
        default=[],
        help="publish a sandbox port on the host; empty HOST picks one",
    )
    group.add_argument(
        "--network",
        metavar="MODE_OR_NAME",
        action="append",
        default=[],
        help=f"a mode ({', '.join(NETWORKS)}; default: the profile's, or bridge with -p), "
        "or a named network to join, whose members reach this sandbox by its name "
        "(repeatable; named networks alone mean mode none, or bridge with -p)",
    )
    # `docker run --net`, the old spelling docker still takes.
    group.add_argument("--net", dest="network", action="append", default=[], help=argparse.SUPPRESS)
    group.add_argument(
        "--runtime",
        metavar="R",
        help="the app container's OCI runtime: runc, crun, runsc (gVisor) or kata "
        "(default: the profile's, else the engine's)",
    )
    needs = parent.add_argument_group("requirements (for the selector)")
    needs.add_argument("--kind", choices=KINDS, help="app container, system container or VM")
    needs.add_argument(
        "--isolation", choices=ISOLATION_LEVELS, help="the weakest isolation acceptable"
    )
    needs.add_argument("--init", action="store_true", help="needs an init system as PID 1")
    needs.add_argument("--custom-kernel", action="store_true", help="needs its own kernel")
    needs.add_argument("--nested", action="store_true", help="needs to run containers inside")
    needs.add_argument(
        "--max-start-seconds",
        type=float,
        metavar="N",
        help="only engines that typically start within N seconds",
    )
    return parent


def launch_options() -> argparse.ArgumentParser:
    """Flags that only matter once the sandbox is launched (run)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("launch")
    group.add_argument("--name", help="sandbox name (default: sbx-<random>)")
    env_option(group)
    group.add_argument(
        "--env-file",
        metavar="FILE",
        action="append",
        default=[],
        help="KEY=VALUE lines (# comments; a bare KEY copies ours); -e wins (repeatable)",
    )
    group.add_argument(
        "--entrypoint",
        metavar="CMD",
        help="run CMD instead of the image's entrypoint ('' clears it)",
    )
    group.add_argument(
        "--pull",
        choices=[policy.value for policy in PullPolicy],
        default=PullPolicy.MISSING.value,
        help="when to fetch the image from its registry (default: missing)",
    )
    group.add_argument(
        "--read-only",
        action="store_true",
        help="a read-only root file system (the profile's, tightened)",
    )
    group.add_argument(
        "--cap-add",
        metavar="CAP",
        action="append",
        default=[],
        help="add a capability, as far as the profile allows (repeatable)",
    )
    group.add_argument(
        "-l",
        "--label",
        dest="labels",
        metavar="K=V",
        action="append",
        default=[],
        help="label on the sandbox (repeatable)",
    )
    group.add_argument(
        "--tmpfs",
        metavar="PATH[:size=64m,mode=1777]",
        action="append",
        default=[],
        help="a fresh tmpfs at PATH (default 64 MiB, mode 1777; repeatable)",
    )
    group.add_argument(
        "--max-lifetime",
        type=duration,
        metavar="AGE",
        help="remove the sandbox after AGE (90s, 15m, 1h, 2d), even if we are killed",
    )
    group.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 256m or 1GiB")
    group.add_argument("--cpus", type=float, metavar="N", help="CPU limit, e.g. 0.5")
    group.add_argument("--pids", type=int, metavar="N", help="process count limit")
    group.add_argument("-w", "--workdir", metavar="DIR", help="working directory of the command")
    group.add_argument("-u", "--user", metavar="USER", help="user[:group] or uid[:gid]")
    group.add_argument(
        "--allow-unenforced",
        metavar="CONTROL",
        action="append",
        default=[],
        choices=CONTROLS,
        help="accept that this profile control goes unenforced (repeatable)",
    )
    return parent


def pairs(values: list[str], flag: str, *, from_environ: bool = False) -> dict[str, str]:
    """K=V strings as a dict; a bare K takes our environment's value when `from_environ`."""
    result: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep:
            if not from_environ:
                raise InvalidSpec(flag, f"expected K=V, got {value!r}")
            if key not in os.environ:
                continue  # as docker does: an unset variable is left out
            item = os.environ[key]
        if not key:
            raise InvalidSpec(flag, f"expected K=V, got {value!r}")
        result[key] = item
    return result


def network_fields(values: list[str], *, published: bool) -> dict[str, Any]:
    """`network` and `networks` from --network values, as docker reads them: a mode's
    name is the mode, anything else a named network. Named networks alone replace the
    default link, as in docker, unless ports are `published` (which need one)."""
    modes = list(dict.fromkeys(value for value in values if value in NETWORKS))
    if len(modes) > 1:
        raise InvalidSpec("--network", f"one mode at most, got {' and '.join(modes)}")
    named = [value for value in values if value not in NETWORKS]
    if not modes and named and not published:
        modes = ["none"]
    return {"network": modes[0] if modes else None, "networks": named}


def profile_from(args: argparse.Namespace) -> str | Profile:
    """--profile, derived with --read-only and --cap-add when given; the profile's own
    rules refuse what it does not allow (cap_add_allowed)."""
    if not getattr(args, "read_only", False) and not getattr(args, "cap_add", []):
        return str(args.profile)
    base = load_profile(args.profile)
    changes: dict[str, Any] = {}
    if args.read_only:
        changes["read_only_root"] = True
    if args.cap_add:
        changes["cap_add"] = (*base.cap_add, *args.cap_add)
    return base.derive(f"{base.name}+flags", **changes)


def spec_from(args: argparse.Namespace, **process: Any) -> SandboxSpec:
    """The SandboxSpec the parsed flags describe, with `process` (command, entrypoint,
    keep) as `run` decides them; invalid values raise InvalidSpec."""
    fields: dict[str, Any] = {
        "image": args.image,
        "profile": profile_from(args),
        "backend": args.backend,
        "runtime": args.runtime,
        **network_fields(
            args.network, published=bool(args.ports or getattr(args, "publish_all", False))
        ),
        "mounts": [Mount.parse(text) for text in args.mounts],
        "ports": [PortMapping.parse(text) for text in args.ports],
        "requirements": Requirements(
            kind=args.kind,
            isolation=args.isolation,
            init=args.init,
            custom_kernel=args.custom_kernel,
            nested=args.nested,
            max_start_seconds=args.max_start_seconds,
        ),
    }
    if hasattr(args, "env"):  # the launch options are present
        fields.update(
            name=args.name,
            env={
                **_envfile.load(args.env_file),
                **pairs(args.env, "--env", from_environ=True),
            },
            labels=pairs(args.labels, "--label"),
            mounts=[*fields["mounts"], *(Mount.parse_tmpfs(text) for text in args.tmpfs)],
            max_lifetime=args.max_lifetime,
            resources=Resources(cpus=args.cpus, memory=args.memory, pids=args.pids),
            workdir=args.workdir,
            user=args.user,
            allow_unenforced=args.allow_unenforced,
            pull=args.pull,
            **process,
        )
    return SandboxSpec(**fields)


def env_option(container: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`-e K=V` as in `docker run`/`docker exec`; read back with `pairs(args.env, ...)`."""
    container.add_argument(
        "-e",
        "--env",
        dest="env",
        metavar="K=V",
        action="append",
        default=[],
        help="environment variable; a bare K copies ours (repeatable)",
    )
