"""A small client of the Docker Registry HTTP API v2, for the local test registry only.

The test set-up pushes hand-made blobs and manifests with it (a multi-arch index, a
hostile layer) that `docker push` cannot make. It talks to loopback only.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import attrs

# scripts/setup-engines.sh starts it; another loopback registry may stand in.
LOCAL = os.environ.get("SANDBOXER_TEST_REGISTRY", "127.0.0.1:5000")
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@attrs.frozen
class Manifest:
    body: bytes
    media_type: str
    digest: str

    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@attrs.frozen
class Registry:
    """The registry at `host` (loopback), over plain HTTP."""

    host: str = LOCAL
    timeout: float = 30.0

    def _url(self, path: str) -> str:
        assert self.host.startswith("127.0.0.1:"), "the tests talk to loopback only"
        return f"http://{self.host}/v2/{path}"

    def _request(
        self,
        method: str,
        path_or_url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        url = path_or_url if path_or_url.startswith("http") else self._url(path_or_url)
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers.items()), error.read()

    def up(self) -> bool:
        try:
            status, _, _ = self._request("GET", "")
        except OSError:
            return False
        return status == 200

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        """The manifest (or index) a tag or digest names, None if the registry has none."""
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        status, headers, body = self._request(
            "GET", f"{repository}/manifests/{reference}", headers=accept
        )
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"GET manifest {repository}:{reference}: HTTP {status} {body!r}")
        media_type = headers.get("Content-Type", "").split(";")[0]
        return Manifest(body, media_type, digest_of(body))

    def blob(self, repository: str, digest: str) -> bytes:
        status, _, body = self._request("GET", f"{repository}/blobs/{digest}")
        if status != 200:
            raise RuntimeError(f"GET blob {repository}@{digest}: HTTP {status}")
        if digest_of(body) != digest:
            raise RuntimeError(f"blob {digest} came back with another digest")
        return body

    def tags_list(self, repository: str) -> bytes:
        """The registry's own tags/list document for `repository`."""
        status, _, body = self._request("GET", f"{repository}/tags/list")
        if status != 200:
            raise RuntimeError(f"GET tags of {repository}: HTTP {status}")
        return body

    def has_blob(self, repository: str, digest: str) -> bool:
        status, _, _ = self._request("HEAD", f"{repository}/blobs/{digest}")
        return status == 200

    def put_blob(self, repository: str, data: bytes) -> str:
        """Upload `data` (monolithic: POST then PUT with the digest); returns its digest."""
        digest = digest_of(data)
        if self.has_blob(repository, digest):
            return digest
        status, headers, body = self._request("POST", f"{repository}/blobs/uploads/")
        if status != 202:
            raise RuntimeError(f"starting an upload to {repository}: HTTP {status} {body!r}")
        location = headers["Location"]
        if not location.startswith("http"):
            location = f"http://{self.host}{location}"
        separator = "&" if "?" in location else "?"
        status, _, body = self._request(
            "PUT",
            f"{location}{separator}digest={digest}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        if status != 201:
            raise RuntimeError(f"uploading {digest} to {repository}: HTTP {status} {body!r}")
        return digest

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Store a manifest or index under a tag (or its digest); returns its digest."""
        status, _, answer = self._request(
            "PUT", f"{repository}/manifests/{reference}", body, {"Content-Type": media_type}
        )
        if status != 201:
            raise RuntimeError(f"PUT manifest {repository}:{reference}: HTTP {status} {answer!r}")
        return digest_of(body)

    def copy_manifest(self, repository: str, source: str, target: str) -> str:
        """Point tag `target` at what `source` (a tag or digest) names, in one repository."""
        found = self.manifest(repository, source)
        if found is None:
            raise RuntimeError(f"{repository}:{source} is not in the registry")
        return self.put_manifest(repository, target, found.body, found.media_type)

    def config(self, repository: str, manifest: Manifest) -> dict[str, Any]:
        """The image config document of a single-platform manifest."""
        digest = manifest.document()["config"]["digest"]
        parsed: dict[str, Any] = json.loads(self.blob(repository, digest))
        return parsed


def image_manifest(config: bytes, layers: list[bytes]) -> bytes:
    """An OCI image manifest for a config and uncompressed layers, as canonical JSON."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    return json.dumps(document, sort_keys=True).encode()


def image_index(entries: list[tuple[Manifest, str, str]]) -> bytes:
    """An OCI index of (manifest, os, architecture) entries."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": len(manifest.body),
                "platform": {"os": system, "architecture": architecture},
            }
            for manifest, system, architecture in entries
        ],
    }
    return json.dumps(document, sort_keys=True).encode()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """Passes manifests and blobs through from `upstream`; when `lie` is set, serves for
    any manifest digest asked for the `lie` repository:tag's manifest instead, whose bytes
    do not match the digest (blobs still pass, so a client that does not check succeeds)."""

    upstream: Registry
    lie: tuple[str, str] | None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].removeprefix("/v2").strip("/")
        if not path:
            self._send(200, b"{}", {"Content-Type": "application/json"})
            return
        repository, kind, reference = ([*path.rsplit("/", 2), "", ""])[:3]
        if kind == "manifests":
            found = self.upstream.manifest(*(self.lie or (repository, reference)))
            if found is None:
                self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', {})
                return
            claimed = reference if self.lie and reference.startswith("sha256:") else found.digest
            headers = {"Content-Type": found.media_type, "Docker-Content-Digest": claimed}
            self._send(200, found.body, headers)
        elif (kind, reference) == ("tags", "list"):
            body = self.upstream.tags_list(repository)
            self._send(200, body, {"Content-Type": "application/json"})
        elif kind == "blobs":
            data = self.upstream.blob(self.lie[0] if self.lie else repository, reference)
            self._send(200, data, {"Content-Type": "application/octet-stream"})
        else:
            self._send(404, b"{}", {"Content-Type": "application/json"})

    do_HEAD = do_GET


@contextlib.contextmanager
def proxy_registry(upstream: Registry, lie: tuple[str, str] | None = None) -> Iterator[str]:
    """A registry in this process on a free loopback port, in front of `upstream` (read
    only), lying about manifests if `lie` names one; yields its host:port. Leaving the
    block stops it: what was pulled through it must then work offline."""
    handler = type("Handler", (_ProxyHandler,), {"upstream": upstream, "lie": lie})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
