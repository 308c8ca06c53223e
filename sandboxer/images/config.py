"""What an image's config says about its processes, and how a launch combines it with
the spec: the same rules on every engine, the ones Docker applies.

- The main process: the spec's command replaces the image's Cmd; the spec's entrypoint
  replaces the image's Entrypoint (and then the image's Cmd is dropped, as Docker does).
  Nothing left means the sandbox idles, ready for exec.
- Environment: the image's Env, then the spec's on top (same key: the spec wins).
- Working directory: the spec's, else the image's WorkingDir, else `/`.
- User: the spec's, else the profile's, else the image's User (else root).
- Ports: the image's ExposedPorts are published only when asked (`publish_all`, `run -P`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of strings in the image config, got {value!r}")
    return tuple(value)


def _exposed(value: Any) -> tuple[tuple[int, str], ...]:
    """ExposedPorts ({"8080/tcp": {}, "53/udp": {}}) as sorted (port, protocol) pairs."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError(f"expected an object of ports in ExposedPorts, got {value!r}")
    found = set()
    for key in value:
        number, _, protocol = str(key).partition("/")
        protocol = protocol or "tcp"
        if not number.isdigit() or not 1 <= int(number) <= 65535 or protocol not in _PROTOCOLS:
            raise ValueError(f"expected PORT[/tcp|/udp] in ExposedPorts, got {key!r}")
        found.add((int(number), protocol))
    return tuple(sorted(found))


_PROTOCOLS = ("tcp", "udp")


@attrs.frozen
class ImageConfig:
    """The process fields of an OCI image config (`config` in its JSON)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # in the image's order
    workdir: str = ""
    user: str = ""
    exposed_ports: tuple[tuple[int, str], ...] = ()  # (port, "tcp" | "udp"), sorted

    @classmethod
    def from_oci(cls, document: Mapping[str, Any]) -> ImageConfig:
        """From an OCI (or Docker v2) image config document; ValueError if malformed."""
        config = document.get("config")
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise ValueError("the image config's `config` is not an object")
        env = []
        for item in _strings(config.get("Env")):
            key, _, value = item.partition("=")
            if key:
                env.append((key, value))
        workdir, user = config.get("WorkingDir", ""), config.get("User", "")
        workdir, user = "" if workdir is None else workdir, "" if user is None else user
        if not isinstance(workdir, str) or not isinstance(user, str):
            raise ValueError("the image config's WorkingDir and User must be strings")
        return cls(
            entrypoint=_strings(config.get("Entrypoint")),
            cmd=_strings(config.get("Cmd")),
            env=tuple(env),
            workdir=workdir,
            user=user,
            exposed_ports=_exposed(config.get("ExposedPorts")),
        )

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "Entrypoint": list(self.entrypoint),
            "Cmd": list(self.cmd),
            "Env": [f"{key}={value}" for key, value in self.env],
            "WorkingDir": self.workdir,
            "User": self.user,
        }
        if self.exposed_ports:  # as Docker: absent when the image exposes nothing
            ports: dict[str, Any] = {
                f"{port}/{protocol}": {} for port, protocol in self.exposed_ports
            }
            document["ExposedPorts"] = ports
        return document

    def main_process(
        self, command: tuple[str, ...] | None, entrypoint: tuple[str, ...] | None
    ) -> tuple[str, ...] | None:
        """The main process's argv under Docker's rules; None: the sandbox idles."""
        if entrypoint is not None:
            argv = (*entrypoint, *(command or ()))
        else:
            argv = (*self.entrypoint, *(command if command is not None else self.cmd))
        return argv or None

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        merged = dict(self.env)
        merged.update(env)
        return merged

    def working_directory(self, workdir: str | None) -> str:
        return workdir or self.workdir or "/"

    def effective_user(self, user: str | None) -> str | None:
        """`user` is the plan's (spec, else profile); the image's only when neither set one."""
        return user if user is not None else (self.user or None)
