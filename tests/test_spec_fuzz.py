"""Bad input, generated: broken specs fail naming the field before any engine call.

Hypothesis builds specs, half of them valid and half with exactly one known broken field.
Every broken one must raise InvalidSpec naming that field without the engine (the
in-memory fake) being called; every valid one must launch. Then: hostile archives from
a sandbox cannot write outside the host destination, and the hardened and strict
profiles refuse extra capabilities and engine sockets.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import sandboxer
from sandboxer import CONTROLS, Handle, Mount, SandboxSpec, load_profile
from sandboxer._backend import ArchiveStream
from sandboxer.testing import FakeBackend
from sandboxer.testing._fake import chunked

Fields = dict[str, Any]
Draw = Callable[[st.SearchStrategy[Any]], Any]

PROFILES = ("hardened", "default", "strict")
GUARDED = ("hardened", "strict")  # the profiles that refuse host-handing mounts

_segment = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,7}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
_safe_text = st.text(st.characters(blacklist_characters="\0", codec="utf-8"), max_size=12)
_env_key = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True)
_label_key = st.from_regex(r"[a-z][a-z0-9.-]{0,11}", fullmatch=True).filter(
    lambda k: not k.startswith("sandboxer.")
)
_name = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9-]{0,62}", fullmatch=True)
_guest_dir = (
    st.lists(_segment, min_size=1, max_size=3)
    .map(lambda p: "/" + "/".join(p))
    .filter(lambda p: p.split("/")[1] not in ("proc", "sys"))
)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Host paths the strategies use: two shareable dirs, a missing one, a link to /run."""
    base = tmp_path_factory.mktemp("fuzz")
    for name in ("a", "b"):
        (base / name).mkdir()
    (base / "run-link").symlink_to("/run")
    return {
        "a": str(base / "a"),
        "b": str(base / "b"),
        "missing": str(base / "missing"),
        "run-link": str(base / "run-link"),
    }


# valid specs ---------------------------------------------------------------------------
def valid_fields(draw: Draw, host: dict[str, str]) -> Fields:
    fields: Fields = {"backend": "fake", "profile": draw(st.sampled_from(PROFILES))}
    if draw(st.booleans()):
        fields["command"] = draw(st.lists(_safe_text, min_size=1, max_size=3))
    fields["env"] = draw(st.dictionaries(_env_key, _safe_text, max_size=3))
    fields["labels"] = draw(st.dictionaries(_label_key, _safe_text, max_size=3))
    if draw(st.booleans()):
        fields["workdir"] = draw(_guest_dir)
    fields["user"] = draw(st.sampled_from([None, "1000", "1000:1000", "sandbox", "65534"]))
    fields["name"] = draw(st.none() | _name)
    targets = draw(st.lists(_guest_dir, max_size=2, unique_by=os.path.normpath))
    fields["mounts"] = [
        {"source": host[draw(st.sampled_from("ab"))], "target": t, "read_only": draw(st.booleans())}
        for t in targets
    ]
    guest_ports = draw(st.lists(st.integers(1, 65535), max_size=2, unique=True))
    fields["ports"] = [
        {"guest_port": p, "protocol": draw(st.sampled_from(["tcp", "udp"]))} for p in guest_ports
    ]
    networks = [None, "isolated", "bridge"] + ([] if guest_ports else ["none"])
    fields["network"] = draw(st.sampled_from(networks))
    fields["resources"] = {
        "cpus": draw(st.none() | st.floats(0.1, 8, allow_nan=False)),
        "memory": draw(st.sampled_from([None, "64MiB", "512m", "1g", 256 * 1024**2])),
        "pids": draw(st.none() | st.integers(1, 4096)),
    }
    fields["requirements"] = {
        "kind": draw(st.sampled_from([None, "app"])),
        "isolation": draw(st.sampled_from([None, "process"])),
    }
    fields["allow_unenforced"] = draw(st.lists(st.sampled_from(CONTROLS), unique=True))
    return fields


# broken specs: each breaks one field of a valid spec and returns the field's name --------
Breaker = Callable[[Draw, Fields, dict[str, str]], str]


def _set(field: str, *values: Any) -> Breaker:
    def breaker(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
        fields[field] = draw(st.sampled_from(values))
        return field

    breaker.__name__ = f"bad_{field}"
    return breaker


def _bad_env(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    key, value = draw(
        st.sampled_from([("1BAD", "x"), ("A-B", "x"), ("", "x"), ("K", "a\0b"), ("K", 1)])
    )
    fields["env"] = {**fields["env"], key: value}
    return f"env[{key!r}]"


def _bad_label(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    key, value = draw(st.sampled_from([("sandboxer.session", "x"), ("k", 1), ("k", "a\0")]))
    fields["labels"] = {**fields["labels"], key: value}
    return f"labels[{key!r}]"


def _bad_mount(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    mount, field = draw(
        st.sampled_from(
            [
                ({"source": host["missing"], "target": "/data"}, "Mount.source"),
                ({"source": "", "target": "/data"}, "Mount.source"),
                ({"source": host["a"], "target": "relative"}, "Mount.target"),
                ({"source": host["a"], "target": "/"}, "Mount.target"),
                ({"source": host["a"], "target": "/proc/x"}, "Mount.target"),
                ({"source": host["a"], "target": "/sys"}, "Mount.target"),
                ({"source": host["a"], "target": "/x\0y"}, "Mount.target"),
                ({"source": host["a"], "target": "/d", "bogus": 1}, "mounts"),
            ]
        )
    )
    fields["mounts"] = [*fields["mounts"], mount]
    return str(field)


def _mount_twice(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    mounts = [{"source": host["a"], "target": "/twice"}, {"source": host["b"], "target": "/twice/"}]
    fields["mounts"] = mounts
    return "mounts[1].target"


def _host_handing_mount(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    fields["profile"] = draw(st.sampled_from(GUARDED))
    source = draw(st.sampled_from(["/", "/etc", "/run", "/var/run", host["run-link"], "/dev"]))
    fields["mounts"] = [{"source": source, "target": "/host"}]
    return "mounts[0].source"


def _bad_port(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    port, field = draw(
        st.sampled_from(
            [
                ({"guest_port": 0}, "PortMapping.guest_port"),
                ({"guest_port": 65536}, "PortMapping.guest_port"),
                ({"guest_port": True}, "PortMapping.guest_port"),
                ({"guest_port": "80"}, "PortMapping.guest_port"),
                ({"guest_port": 80, "host_port": 70000}, "PortMapping.host_port"),
                ({"guest_port": 80, "host_ip": "localhost"}, "PortMapping.host_ip"),
                ({"guest_port": 80, "protocol": "sctp"}, "PortMapping.protocol"),
            ]
        )
    )
    fields["ports"] = [port]
    return str(field)


def _port_twice(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    fields["ports"] = [{"guest_port": 80}, {"guest_port": 80}]
    fields["network"] = None
    return "ports[1].guest_port"


def _port_without_network(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    fields["ports"] = [{"guest_port": 80}]
    fields["network"] = "none"
    return "ports"


def _bad_resources(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    change, field = draw(
        st.sampled_from(
            [
                ({"cpus": 0}, "Resources.cpus"),
                ({"cpus": -1.5}, "Resources.cpus"),
                ({"cpus": True}, "Resources.cpus"),
                ({"memory": "lots"}, "Resources.memory"),
                ({"memory": 0}, "Resources.memory"),
                ({"memory": "-5m"}, "Resources.memory"),
                ({"pids": 0}, "Resources.pids"),
                ({"pids": 1.5}, "Resources.pids"),
                ({"bogus": 1}, "resources"),
            ]
        )
    )
    fields["resources"] = {**fields["resources"], **change}
    return str(field)


def _bad_requirements(draw: Draw, fields: Fields, host: dict[str, str]) -> str:
    change, field = draw(
        st.sampled_from(
            [
                ({"kind": "unikernel"}, "Requirements.kind"),
                ({"isolation": "max"}, "Requirements.isolation"),
                ({"max_start_seconds": 0}, "Requirements.max_start_seconds"),
                ({"max_start_seconds": -1}, "Requirements.max_start_seconds"),
            ]
        )
    )
    fields["requirements"] = {**fields["requirements"], **change}
    return str(field)


BREAKERS: list[Breaker] = [
    _set("image", "", "two words", "tab\there", 42, None),
    _set("command", [], "", ["ok", None], [1]),
    _bad_env,
    _set("env", "K=V", ["K=V"]),
    _set("workdir", "relative/x", "", "/proc", "/sys/fs", "/a\0b"),
    _set("user", "", "   ", 1000),
    _set("name", "-x", "a" * 64, "under_score", "dot.name", "", "sp ace"),
    _bad_label,
    _bad_mount,
    _mount_twice,
    _host_handing_mount,
    _set("mounts", "/a:/b", 42),
    _bad_port,
    _port_twice,
    _port_without_network,
    _bad_resources,
    _set("profile", "no-such-profile", 42, "/nonexistent/profile.toml"),
    _set("network", "internet", "host", ""),
    _bad_requirements,
    _set("allow_unenforced", ["teleportation"], ["seccomp", "x"]),
    _set("backend", 42, b"fake"),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_specs(data: st.DataObject, host: dict[str, str]) -> None:
    fields = valid_fields(data.draw, host)
    before = dict(FakeBackend.sandboxes)
    with mock.patch.object(
        FakeBackend, "create", autospec=True, side_effect=FakeBackend.create
    ) as create:
        if data.draw(st.booleans(), label="broken"):
            breaker = data.draw(st.sampled_from(BREAKERS), label="breaker")
            field = breaker(data.draw, fields, host)
            event(f"broken {field}")
            with pytest.raises(sandboxer.InvalidSpec) as error:
                sandboxer.launch(**fields)
            assert error.value.field == field, str(error.value)
            assert create.call_count == 0
            assert FakeBackend.sandboxes == before
            return
        event("valid")
        with sandboxer.launch(**fields) as sandbox:
            assert create.call_count == 1
            assert sandbox.name in FakeBackend.sandboxes
            assert dict(sandbox.spec.env) == fields["env"]
            for port in fields["ports"]:
                host_ip, host_port = sandbox.port(port["guest_port"], port["protocol"])
                assert host_port > 0
                if port["protocol"] == "tcp":
                    assert sandbox.ports[port["guest_port"]] == (host_ip, host_port)
    assert FakeBackend.sandboxes == before


# hostile archives from the sandbox -------------------------------------------------------
Member = tuple[tarfile.TarInfo, bytes]


def _tar(*members: Member) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info, data


def _file(name: str) -> Member:
    return _member(name, data=b"pwned")


def _dir(name: str) -> Member:
    return _member(name, tarfile.DIRTYPE)


class HostileFake(FakeBackend):
    """A fake engine whose sandbox answers every file request with `archive`."""

    archive: bytes = b""

    def get_archive(self, handle: Handle, path: str, timeout: float, limit: int) -> ArchiveStream:
        yield from chunked(self.archive)


# case -> members, given the host's `outside` directory and a `secret` file in it.
HOSTILE_ARCHIVES: dict[str, Callable[[str, str], list[Member]]] = {
    "dot-dot": lambda outside, secret: [_dir("out"), _file("out/../../escaped")],
    "deep dot-dot": lambda outside, secret: [_dir("out"), _file("out/a/../../../escaped")],
    "absolute": lambda outside, secret: [_dir("out"), _file(f"{outside}/escaped")],
    "symlink out, then write through it": lambda outside, secret: [
        _dir("out"),
        _member("out/link", tarfile.SYMTYPE, outside),
        _file("out/link/escaped"),
    ],
    "relative symlink out": lambda outside, secret: [
        _dir("out"),
        _member("out/up", tarfile.SYMTYPE, "../.."),
        _file("out/up/escaped"),
    ],
    "top entry is a symlink out": lambda outside, secret: [
        _member("out", tarfile.SYMTYPE, outside)
    ],
    "hard link to a host file": lambda outside, secret: [
        _dir("out"),
        _member("out/h", tarfile.LNKTYPE, secret),
    ],
    "device file": lambda outside, secret: [_dir("out"), _member("out/null", tarfile.CHRTYPE)],
}


@pytest.fixture
def hostile() -> Iterator[type[HostileFake]]:
    sandboxer.register_backend("hostile-fake", HostileFake, replace=True)
    yield HostileFake
    sandboxer.unregister_backend("hostile-fake")


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in root.rglob("*")
    }


@pytest.mark.parametrize("case", sorted(HOSTILE_ARCHIVES))
def test_copy_out_of_a_hostile_archive_stays_in_the_destination(
    case: str, tmp_path: Path, hostile: type[HostileFake]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"host secret")
    landing = tmp_path / "landing" / "deeper"
    landing.mkdir(parents=True)
    hostile.archive = _tar(*HOSTILE_ARCHIVES[case](str(outside), str(secret)))
    before = _snapshot(tmp_path)
    error: Exception | None = None
    with sandboxer.launch(backend="hostile-fake", profile="hardened") as sandbox:
        try:
            sandbox.copy_out("/out", landing / "out")
        except sandboxer.SandboxError:
            pass  # refusing the archive is right; writing outside the destination is not
        except Exception as exc:
            error = exc
    after = _snapshot(tmp_path)
    changed = {p for p in set(before) | set(after) if before.get(p, b"?") != after.get(p, b"?")}
    inside = os.path.join("landing", "deeper", "out")
    assert all(p == inside or p.startswith(inside + os.sep) for p in changed), changed
    assert secret.read_bytes() == b"host secret"
    out = landing / "out"
    assert not out.is_symlink(), "the destination became a link out of it"
    for path in out.rglob("*") if out.exists() else ():
        assert not path.is_symlink() or Path(os.path.realpath(path)).is_relative_to(out)
        assert path.is_dir() or (path.is_file() and path.stat().st_nlink == 1), path
    assert error is None, f"refused with {type(error).__name__}, not a SandboxError: {error}"


def test_read_file_of_a_link_does_not_read_the_host(hostile: type[HostileFake]) -> None:
    host_passwd = Path("/etc/passwd").read_bytes()
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        hostile.archive = _tar(_member("passwd", kind, "/etc/passwd"))
        with sandboxer.launch(backend="hostile-fake") as sandbox:
            error: Exception | None = None
            try:
                assert sandbox.read_file("/etc/passwd") != host_passwd
            except sandboxer.SandboxError:
                pass
            except Exception as exc:
                error = exc
            assert error is None, f"{kind!r}: {type(error).__name__}, not a SandboxError: {error}"


@pytest.mark.parametrize("bad", ["relative/x", "../x", "", "/", "/a\0b", "/..", "/tmp/../"])
def test_sandbox_side_paths_must_be_absolute_and_not_root(bad: str, tmp_path: Path) -> None:
    with sandboxer.launch(backend="fake") as sandbox:
        with pytest.raises(sandboxer.InvalidSpec) as error:
            sandbox.write_file(bad, b"x")
        assert error.value.field == "path"
        with pytest.raises(sandboxer.InvalidSpec):
            sandbox.copy_in(tmp_path, bad)
        with pytest.raises(sandboxer.InvalidSpec):
            sandbox.copy_out(bad, tmp_path / "out")
        with pytest.raises(sandboxer.InvalidSpec):
            sandbox.read_file(bad)


def test_dot_dot_in_a_sandbox_path_stays_inside_the_sandbox() -> None:
    with sandboxer.launch(backend="fake") as sandbox:
        sandbox.write_file("/tmp/../tmp/a/../../../tmp/f", b"data")
        assert sandbox.read_file("/tmp/f") == b"data"
        assert set(FakeBackend.sandboxes[sandbox.name].files) == {"/tmp/f"}


# exec and file calls: every argument checked at the entry point ---------------------------
_any_text = st.text(max_size=12)  # NUL, newlines, '=' and all the rest
_exec_arguments = st.fixed_dictionaries(
    {},
    optional={
        "env": st.dictionaries(_any_text | _env_key, _any_text, max_size=3),
        "workdir": _any_text | _guest_dir | st.just("/"),
        "user": _any_text | st.sampled_from(["1000", "1000:1000", "sandbox"]),
        "timeout": st.floats(allow_nan=True) | st.integers(-2, 5) | st.none(),
        "max_output": st.integers(-2, 1 << 20),
    },
)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[sandboxer.Sandbox]:
    with sandboxer.launch(backend="fake") as sandbox:
        yield sandbox


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arguments=_exec_arguments)
def test_generated_exec_arguments(arguments: dict[str, Any], fuzzed: sandboxer.Sandbox) -> None:
    calls = len(FakeBackend.sandboxes[fuzzed.name].calls)
    try:
        result = fuzzed.exec(["true"], **arguments)
    except sandboxer.InvalidSpec as error:
        event(f"refused: {error.field.partition('[')[0]}")
        assert error.field.partition("[")[0] in arguments, error
        assert len(FakeBackend.sandboxes[fuzzed.name].calls) == calls, "reached the engine"
        return
    event("accepted")
    assert result.exit_code == 0
    for key, value in arguments.get("env", {}).items():
        assert key and "=" not in key and "\0" not in key + value
    if "user" in arguments:
        assert not any(c.isspace() or c == "\0" for c in arguments["user"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=_any_text | _guest_dir)
def test_generated_file_call_paths(path: str, fuzzed: sandboxer.Sandbox) -> None:
    calls = len(FakeBackend.sandboxes[fuzzed.name].calls)
    try:
        fuzzed.write_file(path, b"x")
    except sandboxer.InvalidSpec as error:
        assert error.field == "path"
        assert len(FakeBackend.sandboxes[fuzzed.name].calls) == calls
        with pytest.raises(sandboxer.InvalidSpec):
            fuzzed.read_file(path)
        return
    except sandboxer.SandboxError:
        pass  # a valid path whose directory does not exist in the sandbox
    assert path.startswith("/") and "\0" not in path


# guarded profiles refuse what would hand over the host ----------------------------------
# Capabilities that give a sandbox the kernel, the host's files or its network.
DANGEROUS_CAPS = (
    "ALL",
    "SYS_ADMIN",
    "SYS_MODULE",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_BOOT",
    "SYS_TIME",
    "DAC_READ_SEARCH",
    "DAC_OVERRIDE",
    "NET_ADMIN",
    "NET_RAW",
    "BPF",
    "PERFMON",
    "MKNOD",
    "SETFCAP",
    "MAC_ADMIN",
)


@pytest.mark.parametrize("profile", GUARDED)
def test_guarded_profiles_refuse_extra_capabilities(profile: str) -> None:
    accepted = []
    for cap in DANGEROUS_CAPS:
        try:
            SandboxSpec(backend="fake", profile=load_profile(profile).derive("plus", cap_add=[cap]))
        except sandboxer.InvalidSpec as error:
            assert error.field == "profile.cap_add"
            assert cap in str(error)
        else:
            accepted.append(cap)
    assert not accepted, f"{profile} let a derived profile add {accepted}"


@pytest.mark.parametrize("profile", GUARDED)
def test_guarded_profiles_refuse_keeping_the_engine_default_capabilities(profile: str) -> None:
    with pytest.raises(sandboxer.InvalidSpec) as error:
        SandboxSpec(backend="fake", profile=load_profile(profile).derive("lax", cap_drop=[]))
    assert error.value.field == "profile.cap_drop"


@pytest.mark.parametrize("profile", GUARDED)
def test_guarded_profiles_still_allow_binding_low_ports(profile: str) -> None:
    derived = load_profile(profile).derive("web", cap_add=["NET_BIND_SERVICE"])
    assert derived.cap_add == ("NET_BIND_SERVICE",)
    with sandboxer.launch(backend="fake", profile=derived) as sandbox:
        assert sandbox.spec.profile.cap_add == ("NET_BIND_SERVICE",)


@pytest.mark.parametrize("profile", PROFILES)
def test_unknown_capability_names_are_refused(profile: str) -> None:
    with pytest.raises(sandboxer.InvalidSpec) as error:
        load_profile(profile).derive("typo", cap_add=["NET_BIND_SERVCE"])
    assert error.value.field == "profile.cap_add"


# Paths that exist on every Linux host and hold (or lead to) an engine socket.
SOCKET_PARENTS = ("/run", "/var/run", "/var/lib", "/var", "/")


@pytest.mark.parametrize("profile", GUARDED)
@pytest.mark.parametrize("source", SOCKET_PARENTS)
def test_guarded_profiles_refuse_engine_socket_mounts(profile: str, source: str) -> None:
    before = dict(FakeBackend.sandboxes)
    with pytest.raises(sandboxer.InvalidSpec) as error:
        sandboxer.launch(backend="fake", profile=profile, mounts=[Mount(source, "/host")])
    assert error.value.field == "mounts[0].source"
    assert FakeBackend.sandboxes == before


@pytest.mark.parametrize("profile", GUARDED)
def test_guarded_profiles_refuse_a_link_to_the_engine_socket(profile: str, tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/run")
    with pytest.raises(sandboxer.InvalidSpec) as error:
        SandboxSpec(profile=profile, mounts=[Mount(str(link), "/host")])
    assert error.value.field == "mounts[0].source"
