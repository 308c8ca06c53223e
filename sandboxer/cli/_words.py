"""Library errors in the CLI's words: flags (`-v`, `-p`, `--allow-unenforced`) where the
library names its fields and arguments (`Mount.source`, `allow_unenforced=[...]`).

The library keeps its own words for library callers; only what the CLI prints changes.
"""

from __future__ import annotations

import re

from sandboxer import InvalidSpec

# A field of SandboxSpec (and its parts) or of a call -> the flag that sets it; the
# first part of a field names it (`mounts[0].source` -> `mounts`, `env['A']` -> `env`).
_FLAGS = {
    "Mount.size": "--tmpfs",
    "Mount.mode": "--tmpfs",
    "tmpfs": "--tmpfs",
    "max_lifetime": "--max-lifetime",
    "Mount": "-v",
    "mounts": "-v",
    "PortMapping": "-p",
    "ports": "-p",
    "env": "-e",
    "labels": "-l",
    "Resources.memory": "--memory",
    "Resources.cpus": "--cpus",
    "Resources.pids": "--pids",
    "Requirements": "--max-start-seconds",
    "workdir": "-w",
    "user": "-u",
    "name": "--name",
    "image": "IMAGE",
    "command": "COMMAND",
    "entrypoint": "--entrypoint",
    "pull": "--pull",
    "network": "--network",
    "networks": "--network",
    "subnet": "--subnet",
    "backend": "--backend",
    "profile.cap_add": "--cap-add",
    "profile": "--profile",
    "allow_unenforced": "--allow-unenforced",
    "timeout": "--timeout",
    "stdin": "-i",
    "host_path": "HOST_PATH",
    "sandbox_path": "NAME:/path",
}
_ROOT = re.compile(r"^[A-Za-z_]+")
# The library's advice, as `_decide` and the call checks phrase it.
_ALLOW = re.compile(r"pass allow_unenforced=\[([^\]]*)\]")
_OVERWRITE = re.compile(r"pass overwrite=True")
_START = re.compile(r"max_start_seconds=")


def flag(field: str) -> str:
    """The flag (or argument) that sets the library's `field`, else the field itself."""
    if field in _FLAGS:
        return _FLAGS[field]
    dotted = field.split("[")[0]
    if dotted in _FLAGS:
        return _FLAGS[dotted]
    root = _ROOT.match(field)
    return _FLAGS.get(root.group(0), field) if root else field


def _allow_flags(found: re.Match[str]) -> str:
    controls = re.findall(r"'([^']*)'", found.group(1))
    return "add " + " ".join(f"--allow-unenforced {control}" for control in controls)


def advice(text: str) -> str:
    """`text` with the library's Python-call advice said as flags."""
    text = _ALLOW.sub(_allow_flags, text)
    text = _OVERWRITE.sub("add --overwrite", text)
    return _START.sub("--max-start-seconds ", text)


def message(exc: BaseException) -> str:
    """What the CLI prints for `exc`."""
    if isinstance(exc, InvalidSpec):
        return f"{flag(exc.field)}: {advice(exc.message)}"
    return advice(str(exc))
