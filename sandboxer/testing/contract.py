"""The contract every backend passes, unchanged: subclass and provide a `backend` fixture.

    class TestMyBackend(SandboxContract):
        @pytest.fixture(scope="class")
        @classmethod
        def backend(cls): return "mybackend"

`SandboxContract` is what the API promises (the in-memory fake passes it too); its base,
`SharedSandboxContract`, is the part one running sandbox shows (one launch per class,
for images that take a minute to boot); `EngineContract` adds what only a real kernel
can show (limits felt from inside). A subclass may override the `image` fixture.
Commands stay within busybox sh so that every built-in image runs them; an HTTP server
and client come from `serve_http` and `fetch_command`, which also work on images with
python3 and no busybox.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer import Mount, PortMapping, Sandbox, SandboxState
from sandboxer._labels import CREATED_AT, OWNER_PID, SESSION, session_id
from sandboxer._registry import get_backend

from ._contract_files import FilesContract, KernelFilesContract
from ._contract_lifecycle import LifecycleContract
from ._contract_networks import NetworksContract
from ._contract_process import ProcessContract
from ._contract_tmpfs import TmpfsContract
from ._contract_volumes import VolumesContract

Make = Callable[..., Sandbox]


def http_get(url: str, wait: float = 60.0) -> bytes:
    """The body at `url`, retried until a server in a sandbox answers or `wait` passes."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: bytes = response.read()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# Waits until something listens on 127.0.0.1:argv[1] (python3's server starts late).
_WAIT_FOR_PORT = """import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        break
    except OSError:
        time.sleep(0.1)
"""


def serve_http(sandbox: Sandbox, port: int, root: str) -> None:
    """Serve the directory `root` over HTTP on `port` in the background, with what the
    image has: busybox `httpd`, else python3's http.server (sandboxer/debian)."""
    if sandbox.exec(["httpd", "-p", str(port), "-h", root]).exit_code == 0:
        return  # busybox httpd puts itself in the background
    script = (
        f"setsid -f python3 -m http.server -b 0.0.0.0 -d {root} {port} "
        f'</dev/null >/dev/null 2>&1 && python3 -c "$WAIT" {port}'
    )
    result = sandbox.exec(["sh", "-c", script], env={"WAIT": _WAIT_FOR_PORT}, timeout=60)
    assert result.exit_code == 0, result


def fetch_command(address: str, port: int, path: str) -> list[str]:
    """argv that prints the body at http://address:port/path from inside a sandbox (busybox
    nc, not wget: the static wget crashes in its resolver; else python3)."""
    url = f"http://{address}:{port}{path}"
    nc = f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {address} {port}"
    python = f"import urllib.request as u; print(u.urlopen('{url}', timeout=3).read())"
    return ["sh", "-c", f'if command -v nc >/dev/null; then {nc}; else python3 -c "{python}"; fi']


def _names(backend: str) -> set[str]:
    """This session's sandboxes on the engine (other processes may be using it too)."""
    return {
        info.name
        for info in get_backend(backend).list_sandboxes()
        if info.labels.get(SESSION) == session_id()
    }


class SharedSandboxContract(ProcessContract, FilesContract):
    """What one running sandbox shows; it boots a single sandbox for the whole class."""

    @pytest.fixture(scope="class")
    @classmethod
    def image(cls) -> str:
        """The image every sandbox of the suite runs; a subclass may name its own."""
        return str(sandboxer.SandboxSpec().image)

    @pytest.fixture(scope="class")
    @classmethod
    def launch_fields(cls, image: str) -> dict[str, Any]:
        """The fields every launch of the suite takes: the image, and what a subclass must
        consent to for it (an image whose own init runs as root: `allow_unenforced`)."""
        return {"image": image}

    @pytest.fixture
    def make(self, backend: str, launch_fields: dict[str, Any]) -> Iterator[Make]:
        made: list[Sandbox] = []

        def launch(**fields: Any) -> Sandbox:
            sandbox = sandboxer.launch(backend=backend, **launch_fields, **fields)
            made.append(sandbox)
            return sandbox

        yield launch
        for sandbox in made:
            sandbox.destroy()

    @pytest.fixture(scope="class")
    @classmethod
    def shared(cls, backend: str, launch_fields: dict[str, Any]) -> Iterator[Sandbox]:
        """One sandbox for the tests that do not change it (booting a VM per test is slow)."""
        fields = {**launch_fields, "env": {"FROM_SPEC": "spec"}}
        with sandboxer.launch(backend=backend, **fields) as sandbox:
            yield sandbox

    # labels and refusals ------------------------------------------------------------
    def test_ownership_labels(self, shared: Sandbox, backend: str) -> None:
        found = {i.name: i for i in get_backend(backend).list_sandboxes()}[shared.name]
        assert found.labels[OWNER_PID] == str(os.getpid())
        assert found.labels[SESSION] == session_id()
        assert abs(float(found.labels[CREATED_AT]) - time.time()) < 3600

    def test_failed_start_leaves_nothing(self, backend: str) -> None:
        before = _names(backend)
        with pytest.raises(sandboxer.ImageNotFound):
            # A foreign image's own init runs as root on Incus: allowed here, the image is missing.
            sandboxer.launch(
                backend=backend,
                image="sandboxer/no-such-image",
                allow_unenforced=["non_root_user"],
            )
        assert _names(backend) == before

    def test_bad_spec_is_refused_before_the_engine(
        self, backend: str, launch_fields: dict[str, Any], tmp_path: Path
    ) -> None:
        before = _names(backend)
        with pytest.raises(sandboxer.InvalidSpec, match=r"Mount\.source"):
            missing = Mount(str(tmp_path / "missing"), "/data")
            sandboxer.launch(backend=backend, mounts=[missing], **launch_fields)
        assert _names(backend) == before

    # exec ----------------------------------------------------------------------------
    @pytest.mark.parametrize("code", [0, 1, 3, 255])
    def test_exit_codes(self, shared: Sandbox, code: int) -> None:
        result = shared.exec(["sh", "-c", f"exit {code}"])
        assert result.exit_code == code
        assert result.timed_out is False

    def test_streams_are_kept_apart(self, shared: Sandbox) -> None:
        result = shared.exec(["sh", "-c", "echo out; echo err >&2"])
        assert (result.stdout, result.stderr) == (b"out\n", b"err\n")

    def test_stdin(self, shared: Sandbox) -> None:
        data = bytes(range(256)) * 64
        assert shared.exec(["cat"], stdin=data).stdout == data

    def test_env_from_spec_and_exec(self, shared: Sandbox) -> None:
        assert b"FROM_SPEC=spec" in shared.exec(["env"]).stdout.splitlines()
        lines = shared.exec(["env"], env={"FROM_EXEC": "exec", "FROM_SPEC": "over"}).stdout
        assert {b"FROM_EXEC=exec", b"FROM_SPEC=over"} <= set(lines.splitlines())

    def test_workdir(self, shared: Sandbox) -> None:
        assert shared.exec(["pwd"], workdir="/tmp").stdout == b"/tmp\n"

    def test_user(self, shared: Sandbox) -> None:
        assert shared.exec(["id", "-u"]).stdout == b"1000\n"  # hardened: non-root
        assert shared.exec(["id", "-u"], user="65534").stdout == b"65534\n"

    def test_timeout_kills_and_reports(self, shared: Sandbox) -> None:
        started = time.monotonic()
        result = shared.exec(["sleep", "60"], timeout=1)
        assert result.timed_out is True
        assert result.exit_code != 0
        assert time.monotonic() - started < 30
        with pytest.raises(sandboxer.ExecTimeout):
            shared.exec(["sleep", "60"], timeout=1, raise_on_timeout=True)
        assert shared.exec(["echo", "alive"]).stdout == b"alive\n"

    def test_exec_stream(self, shared: Sandbox) -> None:
        stream = shared.exec_stream(["sh", "-c", "echo one; echo two >&2; exit 4"])
        chunks: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        for name, chunk in stream:
            chunks[name] += chunk
        assert chunks == {"stdout": b"one\n", "stderr": b"two\n"}
        assert stream.exit_code == 4

    # files ---------------------------------------------------------------------------
    def test_binary_file_round_trip_5mib(self, shared: Sandbox) -> None:
        data = os.urandom(5 * 1024 * 1024)
        shared.write_file("/tmp/blob", data)
        assert shared.read_file("/tmp/blob") == data
        assert shared.exec(["wc", "-c", "/tmp/blob"]).stdout.split()[0] == str(len(data)).encode()

    def test_read_missing_file(self, shared: Sandbox) -> None:
        with pytest.raises(sandboxer.SandboxFileNotFound):
            shared.read_file("/tmp/does-not-exist")

    def test_copy_tree_in_and_out(self, shared: Sandbox, tmp_path: Path) -> None:
        source = tmp_path / "tree"
        (source / "sub").mkdir(parents=True)
        (source / "top.txt").write_text("top")
        (source / "sub" / "deep.bin").write_bytes(b"\x00\xff" * 1000)
        shared.copy_in(source, "/tmp/tree")
        assert shared.exec(["cat", "/tmp/tree/top.txt"]).stdout == b"top"
        shared.copy_out("/tmp/tree", tmp_path / "back")
        assert (tmp_path / "back" / "top.txt").read_text() == "top"
        assert (tmp_path / "back" / "sub" / "deep.bin").read_bytes() == b"\x00\xff" * 1000


class SandboxContract(LifecycleContract, TmpfsContract, VolumesContract, SharedSandboxContract):
    """The whole API contract: adds the tests that each launch a sandbox of their own."""

    # lifecycle -----------------------------------------------------------------------
    def test_lifecycle(self, make: Make, backend: str) -> None:
        sb = make(labels={"purpose": "contract"})
        assert sb.backend == backend
        assert sb.id and sb.name
        running = sb.state
        assert running is SandboxState.RUNNING
        assert sb.name in _names(backend)
        sb.destroy()
        assert sb.state is SandboxState.DESTROYED
        sb.destroy()  # idempotent
        assert sb.name not in _names(backend)
        with pytest.raises(sandboxer.SandboxNotFound):
            sb.exec(["true"])

    def test_leaving_the_block_after_an_error_destroys(
        self, backend: str, launch_fields: dict[str, Any]
    ) -> None:
        with pytest.raises(RuntimeError), sandboxer.launch(backend=backend, **launch_fields) as sb:
            name = sb.name
            raise RuntimeError("boom")
        assert name not in _names(backend)

    # mounts --------------------------------------------------------------------------
    def test_read_only_mount(self, make: Make, tmp_path: Path) -> None:
        tmp_path.chmod(0o755)  # readable by the hardened user, uid 1000
        (tmp_path / "in.txt").write_text("from host")
        sb = make(mounts=[Mount(str(tmp_path), "/data", read_only=True)])
        assert sb.exec(["cat", "/data/in.txt"]).stdout == b"from host"
        assert sb.exec(["sh", "-c", "echo x > /data/new.txt"]).exit_code != 0
        assert sorted(os.listdir(tmp_path)) == ["in.txt"]

    def test_writable_mount_seen_from_both_sides(self, make: Make, tmp_path: Path) -> None:
        tmp_path.chmod(0o777)  # the hardened user is uid 1000
        sb = make(mounts=[Mount(str(tmp_path), "/data")])
        assert sb.exec(["sh", "-c", "echo from sandbox > /data/out.txt"]).exit_code == 0
        assert (tmp_path / "out.txt").read_text() == "from sandbox\n"
        (tmp_path / "later.txt").write_text("from host later")
        assert sb.exec(["cat", "/data/later.txt"]).stdout == b"from host later"

    # ports ---------------------------------------------------------------------------
    def test_port_mapping_answers_http_on_loopback(self, make: Make) -> None:
        main = ["sh", "-c", "echo ready to serve; exec sleep 100000"]
        sb = make(ports=[PortMapping(guest_port=8080)], command=main)
        host_ip, host_port = sb.ports[8080]
        assert host_ip == "127.0.0.1" and host_port > 0
        assert "ready to serve" in sb.wait_for_log(r"ready to \w+", timeout=60)
        # Nothing listens yet: the engine's port proxy alone does not pass for a server,
        # and the error carries the sandbox's last log lines.
        with pytest.raises(sandboxer.NotReady, match=r"(?s)8080/tcp.*ready to serve"):
            sb.wait_for_port(8080, timeout=1)
        sb.exec(["mkdir", "-p", "/tmp/www"])
        sb.write_file("/tmp/www/index.html", b"hello over http")
        serve_http(sb, 8080, "/tmp/www")
        sb.wait_for_port(8080, timeout=30)
        body = http_get(f"http://{host_ip}:{host_port}/index.html", wait=30)
        assert body == b"hello over http"


class EngineContract(KernelFilesContract, NetworksContract, SandboxContract):
    """What a real kernel shows from inside: limits bite, networks separate, the host is fine."""

    def test_network_none_is_loopback_only(self, shared: Sandbox) -> None:
        assert shared.exec(["ls", "/sys/class/net"]).stdout.split() == [b"lo"]

    def test_waiting_for_a_port_that_is_not_published_reads_the_sandbox(
        self, shared: Sandbox
    ) -> None:
        with pytest.raises(sandboxer.NotReady, match="8089/tcp"):
            shared.wait_for_port(8089, timeout=0.5)
        serve_http(shared, 8089, "/tmp")
        shared.wait_for_port(8089, timeout=30)
        with pytest.raises(sandboxer.NotReady, match="'false' to succeed"):
            shared.wait_for(["false"], timeout=1)
        assert shared.wait_for(["true"]).exit_code == 0

    def test_isolated_sandboxes_cannot_reach_each_other(self, make: Make) -> None:
        server = make(network="isolated")
        client = make(network="isolated")
        server.exec(["mkdir", "-p", "/tmp/www"])
        server.write_file("/tmp/www/index.html", b"private")
        serve_http(server, 8080, "/tmp/www")
        address = server.exec(["hostname", "-i"]).stdout.split()[0].decode()
        fetch = fetch_command(address, 8080, "/index.html")
        assert b"private" in server.exec(fetch, timeout=30).stdout  # it does serve
        assert b"private" not in client.exec(fetch, timeout=30).stdout

    def test_pids_limit_stops_a_fork_bomb(self, make: Make) -> None:
        sb = make(resources={"pids": 16})
        result = sb.exec(["sh", "-c", "for i in $(seq 40); do sleep 3 & done; wait"], timeout=60)
        assert b"fork" in result.stderr.lower() or b"resource" in result.stderr.lower()
        assert subprocess.run(["true"], check=False).returncode == 0  # the host still forks
        # Once the bomb's children end, the sandbox takes commands again.
        deadline = time.monotonic() + 60
        while (alive := sb.exec(["echo", "still here"], timeout=30)).stdout != b"still here\n":
            assert time.monotonic() < deadline, alive
            time.sleep(1)

    def test_memory_limit_kills_a_hog(self, make: Make) -> None:
        sb = make(resources={"memory": "128MiB"})
        hog = "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived ${#x}"
        result = sb.exec(["sh", "-c", hog], timeout=120)
        assert b"survived" not in result.stdout
        assert result.exit_code != 0
        assert sb.exec(["echo", "still here"], timeout=30).stdout == b"still here\n"
