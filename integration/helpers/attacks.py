"""Attack images for integration/test_image_attacks*.py: the test base (sandboxer/debian)
with a changed config or one more layer, pushed to the local registry under
sandboxer-attack/image, and deleted from it (and from every local copy) afterwards."""

from __future__ import annotations

import gzip
import json
import secrets
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sandboxer import Sandbox
from sandboxer.images.store import default_store

from .images import BASE_IMAGE, _entry, _tar, base_in_docker
from .registry import DOCKER_MANIFEST, Registry, digest_of

REPOSITORY = "sandboxer-attack/image"
CLI = str(Path(sys.executable).parent / "sandboxer")
PWNED = "/tmp/pwned"  # what every injected command would create, in the guest
# Shell syntax, quotes, a line break meant to start a raw.lxc or sandbox.conf line.
INJECTIONS = (
    f"$(touch {PWNED}-dollar)",
    f"`touch {PWNED}-backtick`",
    f"'; touch {PWNED}-quote; '",
    f'"; touch {PWNED}-dquote; "',
    f"x\nlxc.apparmor.profile = unconfined\nlxc.init.uid = 0\ntouch {PWNED}-newline",
    "-rf",
    "",
)
WORKDIR = f"/tmp/wd $(touch {PWNED}-wd) `touch {PWNED}-wdbt` 'q\""
# The entrypoint leaves what it was given, then idles.
RECORDER = (
    "/bin/sh",
    "-c",
    'printf "%s\\0" "$@" > /tmp/argv; pwd > /tmp/pwd; exec sleep 2147483647',
    "sh",
)
PLANTED_PROGRAMS = ("busybox", "init", "bin/sh", "sbx-exec", "sbx-kill")
# A user NAMED "1000" whose uid is 0, first in the image's /etc/passwd.
ALIAS_LINE = b"1000:x:0:0:root:/root:/bin/sh\n"


def _delete(registry: Registry, path: str) -> None:
    """DELETE on the registry; what is gone already (another module's clean) is fine."""
    request = urllib.request.Request(f"http://{registry.host}/v2/{path}", method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise


class AttackImages:
    """The base image under REPOSITORY:base, and variants pushed from it by tag."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.pushed: list[str] = []
        # Digests never repeat between runs: the registry's cache answers "manifest
        # unknown" for one pushed again after a DELETE.
        self.nonce = secrets.token_hex(8)
        base_name, _ = base_in_docker()
        if registry.manifest(REPOSITORY, "base") is None:
            name = f"{registry.host}/{REPOSITORY}:base"
            for argv in (["tag", base_name, name], ["push", name]):
                subprocess.run(["docker", *argv], check=True, capture_output=True, timeout=900)
        self.base = registry.manifest(REPOSITORY, "base")
        assert self.base is not None and self.base.media_type == DOCKER_MANIFEST

    def push(
        self, tag: str, config: dict[str, Any] | None = None, layer: bytes | None = None
    ) -> str:
        """The base with `config` merged into its config and `layer` on top; by digest."""
        assert self.base is not None
        document = self.base.document()
        image = self.registry.config(REPOSITORY, self.base)
        image["config"] = {**(image.get("config") or {}), **(config or {})}
        labels = image["config"].get("Labels") or {}
        image["config"]["Labels"] = {**labels, "org.sandboxer.test.nonce": self.nonce}
        if layer is not None:
            compressed = gzip.compress(layer, mtime=0)
            image["rootfs"]["diff_ids"].append(digest_of(layer))
            self.registry.put_blob(REPOSITORY, compressed)
            document["layers"].append(
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": digest_of(compressed),
                    "size": len(compressed),
                }
            )
        blob = json.dumps(image, sort_keys=True).encode()
        self.registry.put_blob(REPOSITORY, blob)
        document["config"] = {**document["config"], "digest": digest_of(blob), "size": len(blob)}
        body = json.dumps(document, indent=3).encode()
        digest = self.registry.put_manifest(REPOSITORY, tag, body, DOCKER_MANIFEST)
        self.pushed.append(digest)
        return f"{self.registry.host}/{REPOSITORY}@{digest}"

    def passwd_layer(self) -> bytes:
        """/etc/passwd of the base with ALIAS_LINE first, and a real uid 1000 last."""
        base = default_store().resolve(BASE_IMAGE, "missing").rootfs / "etc" / "passwd"
        passwd = ALIAS_LINE + base.read_bytes() + b"user:x:1000:1000::/tmp:/bin/sh\n"
        return _tar([_entry("etc/passwd", data=passwd)])

    def clean(self) -> None:
        """Delete what was pushed from the registry, and every local copy of it (the base
        stays: pushed again after a DELETE, the registry would not serve it)."""
        for digest in set(self.pushed):
            reference = f"{self.registry.host}/{REPOSITORY}@{digest}"
            subprocess.run([CLI, "images", "rm", digest], capture_output=True, timeout=300)
            subprocess.run(["docker", "rmi", "-f", reference], capture_output=True, timeout=300)
            _delete(self.registry, f"{REPOSITORY}/manifests/{digest}")


def program(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    """An executable that leaves a mark when anyone runs it."""
    info, data = _entry(name, data=f"#!/bin/sh\ntouch {PWNED}-helper\n".encode())
    info.mode = 0o755
    return info, data


def wait_for(sandbox: Sandbox, path: str) -> bool:
    """Whether `path` has content within 10 s (an entrypoint writes it)."""
    script = f"for i in $(seq 100); do [ -s {path} ] && exit 0; sleep 0.1; done; exit 1"
    return bool(sandbox.exec(["sh", "-c", script]).exit_code == 0)


def text(sandbox: Sandbox, *argv: str) -> str:
    result = sandbox.exec(list(argv), timeout=120)
    assert result.exit_code == 0, result
    return str(result.stdout.decode())


def no_injection_ran(sandbox: Sandbox) -> None:
    """No command injected through the image ran, in the sandbox or on the host."""
    found = sandbox.exec(["sh", "-c", f"ls -d {PWNED}* 2>/dev/null; true"]).stdout.decode()
    assert found == "", f"an injected command ran in the sandbox: {found}"
    assert not [p for p in Path("/tmp").iterdir() if p.name.startswith("pwned")]
