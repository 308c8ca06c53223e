"""The Docker adapter's pure parts: error mapping, refusals and plan -> container config
(no engine)."""

from __future__ import annotations

import inspect
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

import sandboxer
from sandboxer import Mount, PortMapping, SandboxSpec
from sandboxer._launch import make_plan
from sandboxer.backend import Handle
from sandboxer.backends.docker import DockerBackend, _accounts, _config
from sandboxer.backends.docker._config import KEEPALIVE, create_arguments
from sandboxer.backends.docker._errors import MAPPING, translate
from sandboxer.backends.docker._images import ReadyImage
from sandboxer.images import ImageConfig

BUILTIN = ReadyImage("sandboxer/minimal:1", ImageConfig(), builtin=True)
BARE = ReadyImage("sha256:bare", ImageConfig(), builtin=False)  # no Entrypoint, no Cmd
SERVER = ReadyImage(
    "sha256:server",
    ImageConfig(entrypoint=("/entry",), cmd=("serve",), workdir="/srv", user="app"),
    builtin=False,
)
CMD_ONLY = ReadyImage("sha256:cmd", ImageConfig(cmd=("serve",)), builtin=False)


def _docker_exception_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(docker.errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__.startswith("docker")
    ]


@pytest.mark.parametrize("cls", _docker_exception_classes(), ids=lambda c: c.__name__)
def test_every_docker_exception_is_mapped(cls: type[BaseException]) -> None:
    assert any(issubclass(cls, source) for source, _ in MAPPING), cls


def test_mapping_targets() -> None:
    response = requests.Response()
    response.status_code = 404
    assert isinstance(translate(docker.errors.NotFound("x", response)), sandboxer.SandboxNotFound)
    missing = translate(
        docker.errors.ImageNotFound("404 Client Error", response, explanation="No such image: x")
    )
    assert isinstance(missing, sandboxer.ImageNotFound)
    assert "404 Client Error" not in str(missing) and "launch again" in str(missing)
    conflict = requests.Response()
    conflict.status_code = 409
    error = docker.errors.APIError("Conflict", conflict, explanation="name is already in use")
    assert isinstance(translate(error), sandboxer.SandboxExists)
    down = translate(requests.exceptions.ConnectionError("refused"))
    assert isinstance(down, sandboxer.BackendUnavailable) and down.fix


def test_hardened_plan_becomes_a_locked_down_container(tmp_path: Path) -> None:
    plan = make_plan(
        SandboxSpec(
            env={"A": "1"},
            workdir="/tmp",
            mounts=[Mount(str(tmp_path), "/data", read_only=True)],
            ports=[PortMapping(8080, 18080)],
            resources={"cpus": 0.5},
        )
    )
    args = create_arguments(plan, BUILTIN, "bridge")
    assert args["image"] == "sandboxer/minimal:1"
    assert args["command"] == list(KEEPALIVE)
    assert args["cap_drop"] == ["ALL"]
    assert args["read_only"] is True
    assert args["user"] == "1000:1000"
    assert args["pids_limit"] == 128 and args["mem_limit"] == args["memswap_limit"] == 256 << 20
    assert args["nano_cpus"] == 500_000_000
    [mount] = args["mounts"]
    assert (mount["Source"], mount["Target"], mount["Type"]) == (str(tmp_path), "/data", "bind")
    assert mount["ReadOnly"] is True
    assert args["ports"] == {"8080/tcp": ("127.0.0.1", 18080)}
    assert "no-new-privileges:true" in args["security_opt"]
    seccomp = next(o for o in args["security_opt"] if o.startswith("seccomp="))
    assert json.loads(seccomp.removeprefix("seccomp="))["defaultAction"] == "SCMP_ACT_ERRNO"
    assert args["labels"]["sandboxer.managed"] == "true"
    assert "/tmp" in args["tmpfs"]


def test_default_profile_adds_no_controls() -> None:
    args = create_arguments(make_plan(SandboxSpec(profile="default")), BUILTIN, "bridge")
    for key in ("cap_drop", "security_opt", "pids_limit", "mem_limit", "tmpfs"):
        assert key not in args
    assert args["read_only"] is False


# the main process: Docker's rules, or an idle sandbox ------------------------------------
@pytest.fixture
def helper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(_config, "helper_dir", lambda: tmp_path)
    return tmp_path


def _process(image: ReadyImage, **fields: Any) -> dict[str, Any]:
    args = create_arguments(make_plan(SandboxSpec(**fields)), image, None)
    return {key: args[key] for key in ("entrypoint", "command", "mounts") if key in args}


def _main(image: ReadyImage, **fields: Any) -> dict[str, Any]:
    """The main process alone (an OCI image always gets the helper's mount too)."""
    process = _process(image, **fields)
    process.pop("mounts")
    return process


def test_an_image_with_an_entrypoint_runs_it_as_docker_would(helper: Path) -> None:
    # Nothing passed: Docker runs the image's Entrypoint and Cmd (never KEEPALIVE as
    # arguments of the Entrypoint).
    assert _main(SERVER) == {}
    assert _main(SERVER, command=["other"]) == {"command": ["other"]}
    assert _main(SERVER, entrypoint=["/bin/sh", "-c"], command=["x"]) == {
        "entrypoint": ["/bin/sh", "-c"],
        "command": ["x"],
    }
    assert _main(CMD_ONLY) == {}


def test_the_file_calls_busybox_is_labelled_where_it_lies(helper: Path) -> None:
    # An OCI image, even one with a main process of its own: the helper's, mounted.
    args = create_arguments(make_plan(SandboxSpec()), SERVER, None)
    [mount] = args["mounts"]
    assert args["labels"][_config.BUSYBOX_LABEL] == f"{mount['Target']}/busybox"
    # A busybox built-in: its own.
    args = create_arguments(make_plan(SandboxSpec()), BUILTIN, None)
    assert "mounts" not in args
    assert args["labels"][_config.BUSYBOX_LABEL] == "/bin/busybox"


def test_an_empty_entrypoint_clears_the_images(helper: Path) -> None:
    assert _main(SERVER, entrypoint=[], command=["echo", "hi"]) == {
        "entrypoint": [""],
        "command": ["echo", "hi"],
    }


def test_an_image_with_nothing_to_run_idles_on_the_helpers_busybox(helper: Path) -> None:
    cases: list[tuple[ReadyImage, dict[str, Any]]] = [
        (BARE, {}),
        (SERVER, {"entrypoint": []}),  # the image's Cmd goes with its Entrypoint
    ]
    targets = set()
    for image, fields in cases:
        process = _process(image, **fields)
        [mount] = process["mounts"]
        assert mount["Source"] == str(helper) and mount["Target"].startswith("/.sandboxer-")
        assert mount["ReadOnly"] is True and mount["Type"] == "bind"
        assert process["entrypoint"] == [""]
        assert process["command"] == [f"{mount['Target']}/busybox", *KEEPALIVE]
        targets.add(mount["Target"])
    # A fresh mount point each time: an image cannot plant a symlink where it goes.
    assert len(targets) == len(cases)


def test_a_builtin_idles_on_its_own_sleep_whatever_its_cmd(helper: Path) -> None:
    assert _process(BUILTIN) == {"entrypoint": [""], "command": list(KEEPALIVE)}
    assert _process(BUILTIN, command=["sh"]) == {"command": ["sh"]}


def test_the_helper_joins_the_specs_mounts(helper: Path, tmp_path: Path) -> None:
    process = _process(BARE, mounts=[Mount(str(tmp_path), "/data")])
    assert [m["Target"][:12] for m in process["mounts"]] == ["/data", "/.sandboxer-"]


def test_unset_user_and_workdir_leave_the_images() -> None:
    args = create_arguments(make_plan(SandboxSpec(profile="default")), SERVER, None)
    assert args["user"] == ""  # Docker's empty User: the image's
    assert "working_dir" not in args
    assert args["environment"] == {}  # Docker merges the image's Env under the spec's
    hardened = create_arguments(make_plan(SandboxSpec(workdir="/w", env={"A": "2"})), SERVER, None)
    assert (hardened["user"], hardened["working_dir"]) == ("1000:1000", "/w")
    assert hardened["environment"] == {"A": "2"}


def test_systemd_is_refused_with_the_reason() -> None:
    [reason] = DockerBackend.refusals(make_plan(SandboxSpec(image="sandboxer/systemd")))
    assert "systemd" in reason and "incus or libvirt" in reason
    assert DockerBackend.refusals(make_plan(SandboxSpec(image="sandboxer/debian"))) == []


def test_logs_read_what_is_there_and_never_follow() -> None:
    # The SDK follows a streamed log unless told not to: logs() of a running sandbox
    # would never return.
    asked: dict[str, Any] = {}

    class API:
        def logs(self, container: str, **kwargs: Any) -> list[bytes]:
            asked.update(kwargs)
            return [b"one\n", b"two\n"]

    backend = object.__new__(DockerBackend)
    backend._api = API()
    assert backend.logs(Handle("id", "name")) == "one\ntwo\n"
    assert asked["follow"] is False and asked["stream"] is True


# a user name the image makes root -----------------------------------------------------
class _Archives:
    """get_archive of a created container: each path a tar of one member."""

    def __init__(self, files: dict[str, tarfile.TarInfo | bytes]) -> None:
        self.files = files

    def get_archive(self, container: str, path: str) -> tuple[list[bytes], dict[str, Any]]:
        if path not in self.files:
            raise docker.errors.NotFound("no such file")
        entry, buffer = self.files[path], io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(path.rsplit("/", 1)[-1])
                info.size = len(entry)
                tar.addfile(info, io.BytesIO(entry))
        return [buffer.getvalue()], {}


def _link(target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo("passwd")
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


ROOT_APP = b"root:x:0:0::/root:/bin/sh\napp:x:0:0::/:/bin/sh\n"


@pytest.mark.parametrize(
    "files",
    [
        {"/etc/passwd": ROOT_APP},
        {"/etc/passwd": _link("../usr/passwd"), "/usr/passwd": ROOT_APP},  # followed
    ],
)
def test_a_named_user_the_image_makes_root_is_refused(files: dict[str, Any]) -> None:
    named = sandboxer.load_profile("default").derive("named-user", user="app")
    with pytest.raises(sandboxer.InvalidSpec, match="uid 0"):
        _accounts.check_user(_Archives(files), "c", make_plan(SandboxSpec(profile=named)))


def test_numbers_root_asked_for_and_unknown_names_read_or_refuse_nothing() -> None:
    archives = _Archives({"/etc/passwd": ROOT_APP})
    named = sandboxer.load_profile("default").derive("named-user", user="app")
    for spec in (
        SandboxSpec(profile="hardened"),  # 1000:1000: no file read
        SandboxSpec(profile=named, user="root"),  # asked for: reported relaxed
        SandboxSpec(profile=named, user="ghost"),  # Docker's start says it is unknown
        SandboxSpec(profile="default", user="app"),  # no non_root_user control
    ):
        _accounts.check_user(archives, "c", make_plan(spec))
    _accounts.check_user(_Archives({}), "c", make_plan(SandboxSpec(profile=named)))


def test_the_host_name_is_the_chosen_one_else_the_name() -> None:
    chosen = make_plan(SandboxSpec(name="box", hostname="web.example"))
    assert create_arguments(chosen, BUILTIN, None)["hostname"] == "web.example"
    assert create_arguments(make_plan(SandboxSpec(name="box")), BUILTIN, None)["hostname"] == "box"
