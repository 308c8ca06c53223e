"""Where the Incus daemon is, and the few REST calls every module shares.

By default the local unix socket; a remote daemon over HTTPS with a client certificate
when SANDBOXER_INCUS_ENDPOINT is an https:// URL (SANDBOXER_INCUS_CERT/_KEY name the
PEM files; SANDBOXER_INCUS_VERIFY is "true", "false" or a CA bundle path).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from typing import Any
from urllib.parse import quote, urlparse

import attrs
import requests
import urllib3

from sandboxer.backend import EngineError, InvalidSpec

from ._errors import incus_errors
from ._sdk import pylxd
from ._websocket import WebSocket

DEFAULT_SOCKET = "/var/lib/incus/unix.socket"
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _verify(value: str | None) -> bool | str:
    if value is None or value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    return value  # a CA bundle


@attrs.frozen
class Endpoint:
    """A unix socket path, or an https:// URL with an optional client certificate."""

    address: str = DEFAULT_SOCKET
    cert: tuple[str, str] | None = None
    verify: bool | str = True

    @classmethod
    def from_env(cls) -> Endpoint:
        address = os.environ.get("SANDBOXER_INCUS_ENDPOINT") or DEFAULT_SOCKET
        address = address.removeprefix("unix://")
        cert_file, key_file = (os.environ.get(f"SANDBOXER_INCUS_{k}") for k in ("CERT", "KEY"))
        if bool(cert_file) != bool(key_file):
            raise InvalidSpec(
                "SANDBOXER_INCUS_CERT", "set both SANDBOXER_INCUS_CERT and SANDBOXER_INCUS_KEY"
            )
        if not address.startswith(("/", "https://")):
            raise InvalidSpec(
                "SANDBOXER_INCUS_ENDPOINT", f"expected a socket path or https:// URL: {address!r}"
            )
        cert = (cert_file, key_file) if cert_file and key_file else None
        return cls(address, cert, _verify(os.environ.get("SANDBOXER_INCUS_VERIFY")))

    @property
    def is_local(self) -> bool:
        """A unix socket: the daemon runs on this host and its processes are visible here."""
        return self.address.startswith("/")

    def client(self, timeout: float | None = None) -> Any:
        session = _unix_session(self.address) if self.is_local else None
        if not self.is_local:
            session = pylxd.client.get_session_for_url(
                self.address, verify=self.verify, cert=self.cert
            )
            # Else REQUESTS_CA_BUNDLE (if set) silently overrides an explicit verify setting.
            session.trust_env = self.verify is True
        with incus_errors():
            return pylxd.Client(
                endpoint=self.address,
                cert=self.cert,
                verify=self.verify,
                timeout=timeout,
                session=session,
            )

    def open_socket(self, timeout: float) -> socket.socket:
        """A fresh connection to the daemon, for one websocket."""
        if self.is_local:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.address)
            return sock
        url = urlparse(self.address)
        raw = socket.create_connection((url.hostname, url.port or 8443), timeout=timeout)
        context = ssl.create_default_context(
            cafile=self.verify if isinstance(self.verify, str) else None
        )
        if self.verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert:
            context.load_cert_chain(*self.cert)
        return context.wrap_socket(raw, server_hostname=url.hostname)

    @property
    def host(self) -> str:
        return "localhost" if self.is_local else urlparse(self.address).netloc


class _SocketPool(urllib3.HTTPConnectionPool):
    """Keep-alive connections to the daemon's unix socket, up to `maxsize` kept for reuse."""

    def __init__(self, path: str, maxsize: int) -> None:
        super().__init__("localhost", maxsize=maxsize)
        self.path = path

    def _new_conn(self) -> Any:
        connection = urllib3.connection.HTTPConnection("localhost")
        path = self.path

        def connect() -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            connection.sock = sock

        connection.connect = connect  # type: ignore[method-assign]
        return connection


class _SocketAdapter(requests.adapters.HTTPAdapter):
    """One connection pool for the whole daemon. pylxd's own adapter keys its pools by full
    URL: a new pool (and connection) for every operation id, and under load it closes
    pools that are still in use."""

    def __init__(self, path: str, maxsize: int = 64) -> None:
        super().__init__()
        self._pool = _SocketPool(path, maxsize)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        return self._pool

    def request_url(self, request: Any, proxies: Any) -> str:
        return str(request.path_url)

    def close(self) -> None:
        self._pool.close()


def _unix_session(path: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy, netrc or CA bundle applies to a unix socket
    session.mount("http+unix://", _SocketAdapter(path))
    return session


class SentWait:
    """An operation's /wait request sent ahead on a connection of its own: the daemon
    answers as the operation ends, so reading the answer then costs no round trip."""

    def __init__(self, endpoint: Endpoint, operation: str) -> None:
        with incus_errors():
            sock = endpoint.open_socket(timeout=10.0)
        sock.settimeout(None)  # the operation takes as long as its command
        self._connection = http.client.HTTPConnection(endpoint.host)
        self._connection.sock = sock
        try:
            self._connection.request("GET", f"/1.0/operations/{quote(operation)}/wait")
        except OSError as exc:
            self.close()
            raise EngineError(f"waiting for operation {operation}: {exc}") from exc

    def result(self) -> dict[str, Any]:
        """The finished operation's metadata (once it finishes), or raise its error."""
        try:
            response = self._connection.getresponse()
            body = json.loads(response.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise EngineError(f"waiting for an operation: {exc}") from exc
        finally:
            self.close()
        metadata: dict[str, Any] = body.get("metadata") or {}
        if response.status != 200:
            raise EngineError(body.get("error") or f"operation wait: HTTP {response.status}")
        if metadata.get("status") == "Failure" or metadata.get("err"):
            raise EngineError(metadata.get("err") or "the operation failed")
        return metadata

    def close(self) -> None:
        self._connection.close()


# Every REST call has a deadline; an operation wait asks the daemon to give up a little
# before the client would, so a slow operation is reported by Incus, not cut off mid-reply.
REST_SECONDS = 120.0
OPERATION_SECONDS = 100.0


class Incus:
    """A pylxd client plus operation waiting and websockets, shared by one backend."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.client = endpoint.client(timeout=REST_SECONDS)
        self.api = self.client.api

    def wait(self, response: Any, timeout: float = OPERATION_SECONDS) -> dict[str, Any]:
        """Wait for the operation a 202 response started; its metadata, or raise its error."""
        body = response.json()
        if body.get("type") != "async":
            return dict(body.get("metadata") or {})
        return self.wait_operation(self.operation_id(body), timeout)

    def wait_operation(self, operation: str, timeout: float = OPERATION_SECONDS) -> dict[str, Any]:
        seconds = int(min(timeout, OPERATION_SECONDS))
        try:
            with incus_errors():
                result = self.api.operations[operation].wait.get(params={"timeout": seconds})
                metadata: dict[str, Any] = result.json().get("metadata") or {}
                if metadata.get("status") == "Failure" or metadata.get("err"):
                    raise pylxd.exceptions.LXDAPIException(result)
        except EngineError as exc:
            if "deadline exceeded" not in str(exc):
                raise
            raise EngineError(f"Incus operation {operation} ran past {seconds} s") from exc
        return metadata

    @staticmethod
    def operation_id(body: dict[str, Any]) -> str:
        return str(body["operation"]).rstrip("/").rsplit("/", 1)[-1]

    def websockets(
        self, operation: str, secrets: dict[int, str], timeout: float = 10.0
    ) -> dict[int, WebSocket]:
        """Connect one websocket per secret, the handshakes in flight together: the
        daemon answers them in parallel, so this costs one round trip, not one each."""
        path = f"/1.0/operations/{quote(operation)}/websocket?secret="
        resources = {fd: path + quote(secret) for fd, secret in secrets.items()}
        sockets: dict[int, socket.socket] = {}
        websockets: dict[int, WebSocket] = {}
        try:
            keys: dict[int, bytes] = {}
            for fd, resource in resources.items():
                sockets[fd] = self.endpoint.open_socket(timeout)
                keys[fd] = WebSocket.request_upgrade(sockets[fd], self.endpoint.host, resource)
            for fd, key in keys.items():
                websockets[fd] = WebSocket.accept(sockets[fd], key, resources[fd])
                sockets[fd].settimeout(None)
        except BaseException:
            for sock in sockets.values():
                sock.close()
            raise
        return websockets

    def file_type(self, instance: str, path: str) -> str | None:
        """The type at `path` as the instance sees it: "file", "directory", "symlink" or None."""
        files = self.api.instances[instance].files
        with incus_errors():
            response = self.api.session.head(files._api_endpoint, params={"path": path})
        if response.status_code != 200:
            return None
        return str(response.headers.get("X-Incus-type", "file"))

    def close(self) -> None:
        self.api.session.close()
