"""Incus image metadata: the metadata.yaml and templates every sandboxer image carries."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping

from ._config import ADDRESS_KEY, HOSTNAME_KEY, HOSTS_KEY, RESOLV_KEY

# Bump when the templates change: images are found by aliases that carry it, so a
# changed template makes every image be imported again instead of reused stale.
TEMPLATES_REVISION = 3
_ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64"}
# Rendered by Incus at first start: the sandbox's host name resolves to its address.
_HOSTNAME = '{{ config_get("' + HOSTNAME_KEY + '", instance.name) }}'
TEMPLATES = {
    "/etc/hosts": (
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
        '{{ config_get("' + ADDRESS_KEY + '", "127.0.1.1") }} ' + _HOSTNAME + "\n"
        # The named networks' members known at create (later ones resolve through DNS).
        '{{ config_get("' + HOSTS_KEY + '", "") }}'
    ),
    "/etc/hostname": _HOSTNAME + "\n",
    # The named networks' DNS (their gateways); empty without one.
    "/etc/resolv.conf": '{{ config_get("' + RESOLV_KEY + '", "") }}',
}


def template_name(path: str) -> str:
    return path.strip("/").replace("/", "-") + ".tpl"


def metadata_yaml(
    created: float, properties: Mapping[str, str], templates: Mapping[str, str]
) -> bytes:
    """metadata.yaml; values are written as JSON strings, which YAML reads as they are."""
    machine = platform.machine().lower()
    return (
        f"architecture: {_ARCHITECTURES.get(machine, machine)}\n"
        f"creation_date: {int(created)}\n"
        "properties:\n"
        + "".join(
            f"  {json.dumps(key)}: {json.dumps(value)}\n" for key, value in properties.items()
        )
        + "templates:\n"
        + "".join(
            f"  {path}:\n    when: [create, copy]\n    template: {template_name(path)}\n"
            for path in templates
        )
    ).encode()


def template_files(templates: Mapping[str, str]) -> dict[str, bytes]:
    """The templates/ members of an image tarball."""
    return {f"templates/{template_name(path)}": text.encode() for path, text in templates.items()}
