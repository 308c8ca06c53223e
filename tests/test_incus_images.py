"""OCI images on Incus, the pure parts: which init boots, what PID 1 runs, the converted
tarball (links kept as links, nothing followed on the host), and the refusals.

No engine is touched: trees are made in tmp_path and GNU tar reads them.
"""

from __future__ import annotations

import base64
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer import SandboxSpec
from sandboxer._backend import LaunchPlan
from sandboxer._launch import make_plan
from sandboxer.backends.incus import _boot, _config, _images, _metadata, _oci, _prepare, _refusals
from sandboxer.images import ImageConfig
from sandboxer.images.helper import INIT, MOUNT_POINT
from sandboxer.images.store import LocalImage
from sandboxer.images.systemd import boots_systemd
from sandboxer.images.tree import read_in_tree

DIGEST = "sha256:" + "ab" * 32


def plan(**fields: Any) -> LaunchPlan:
    return make_plan(SandboxSpec(backend="incus", **fields))


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXER_HELPER_DIR", str(tmp_path / "helper"))


def image(rootfs: Path, config: ImageConfig | None = None) -> LocalImage:
    return LocalImage(
        reference="127.0.0.1:5000/team/app:1",
        digest=DIGEST,
        config=config or ImageConfig(),
        rootfs=rootfs,
        size=0,
        layout=rootfs.parent / "layout",
        layout_tag="1",
    )


def tree(tmp_path: Path) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:4242:4343::/app:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\napp:x:4343:\nstaff:x:50:\n")
    (rootfs / "app").mkdir()
    return rootfs


# which names go to the store ---------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sandboxer/debian", True),
        ("sandboxer/systemd", True),
        ("127.0.0.1:5000/team/app:1", True),
        ("localhost/app", True),
        ("docker.io/library/alpine:3", True),
        ("alpine@sha256:" + "0" * 64, True),
        ("alpine:3", False),  # may be an Incus alias: Incus is asked first
        ("sandboxer-test/own-init-1234", False),
        ("e36e469c2496", False),  # a fingerprint
        ("Not A Reference", False),
    ],
)
def test_names_that_only_the_store_can_mean(name: str, expected: bool) -> None:
    assert _images.in_store(name) is expected


# what PID 1 runs --------------------------------------------------------------------
def _decoded(line: str) -> list[str]:
    words = line.removeprefix("lxc.init.cmd = ").split()  # as LXC splits it
    assert words[:2] == [INIT, "--base64"] and all(word[0] == "_" for word in words[2:])
    return [base64.b64decode(word[1:], validate=True).decode() for word in words[2:]]


def test_the_helper_init_runs_the_image_config_as_its_user(tmp_path: Path, helper: None) -> None:
    config = ImageConfig(
        entrypoint=("/entry", "a b"),
        cmd=("serve",),
        env=(("PATH", "/usr/bin"), ("MODE", "image")),
        workdir="/app",
        user="app",
    )
    launch = plan(profile="default", env={"MODE": "spec"})
    boot = _boot.helper(launch, image(tree(tmp_path), config))
    lines = boot.lines()
    assert _decoded(lines[0]) == ["/entry", "a b", "serve"]
    assert lines[1:] == ["lxc.init.cwd = /app", "lxc.init.uid = 4242", "lxc.init.gid = 4343"]
    assert boot.environment == {"PATH": "/usr/bin", "MODE": "spec"}
    assert boot.user == "app" and boot.workdir == "/app"
    device = boot.devices()[_boot.HELPER_DEVICE]
    assert device["path"] == MOUNT_POINT and device["readonly"] == "true"
    assert Path(device["source"], "init").is_file()
    config_keys = _config.instance_request(launch, "f" * 64, "default", None, True, boot)["config"]
    assert config_keys["environment.MODE"] == "spec"
    assert config_keys[_config.WORKDIR_KEY] == "/app"
    assert config_keys["user.sandboxer.user"] == "app"  # exec's default, also after attach


def test_the_profile_user_wins_and_no_main_process_means_an_idle_init(
    tmp_path: Path, helper: None
) -> None:
    boot = _boot.helper(plan(), image(tree(tmp_path), ImageConfig(user="app")))
    assert boot.lines()[0] == f"lxc.init.cmd = {INIT}"
    assert "lxc.init.uid = 1000" in boot.lines()  # hardened's 1000:1000, no lookup
    assert boot.workdir == "/"


def test_a_user_name_is_looked_up_without_following_the_image_links(
    tmp_path: Path, helper: None
) -> None:
    rootfs = tree(tmp_path)
    (rootfs / "etc/passwd").unlink()
    # A link to the host's accounts: it points into the sandbox, never read on the host.
    (rootfs / "etc/passwd").symlink_to("/etc/passwd")
    with pytest.raises(sandboxer.InvalidSpec, match="no user 'root'"):
        _boot.helper(plan(user="root"), image(rootfs))
    (rootfs / "etc/passwd").unlink()
    os.rename(rootfs / "etc", rootfs / "real-etc")
    (rootfs / "etc").symlink_to("real-etc")  # even a link inside the tree is not followed
    assert read_in_tree(rootfs, "/etc/group") == ""
    assert read_in_tree(rootfs, "/../rootfs/real-etc/group") == ""


def test_an_image_environment_with_a_line_break_is_refused(tmp_path: Path, helper: None) -> None:
    rootfs = tree(tmp_path)
    config = ImageConfig(env=(("EVIL", "x\nlxc.hook.pre-start = /bin/sh"),))
    with pytest.raises(sandboxer.UnsupportedFeature, match="EVIL"):
        _boot.helper(plan(), image(rootfs, config))
    with pytest.raises(sandboxer.UnsupportedFeature, match="working directory"):
        _boot.helper(plan(), image(rootfs, ImageConfig(workdir="/x\nlxc.x = 1")))


def test_a_missing_working_directory_is_made_before_start(tmp_path: Path, helper: None) -> None:
    rootfs = tree(tmp_path)
    (rootfs / "linked").symlink_to("app")
    source = _images.Source("f", image(rootfs))
    for workdir, made in (("/app", False), ("/nowhere", True), ("/linked", True)):
        boot = _boot.helper(plan(profile="default", workdir=workdir), image(rootfs))
        points = _prepare.paths(plan(profile="default"), boot, source.exists)
        assert ((workdir, False) in points) is made  # a link is checked inside the sandbox
    boot = _boot.helper(plan(), image(rootfs))
    assert _prepare.paths(plan(), boot, source.exists) == [("/tmp", False)]
    assert _prepare.service(plan(command=["x"]), boot) is None  # argv goes to the init


# enforcement and refusals ------------------------------------------------------------
def test_the_helper_init_runs_as_the_user_so_the_claim_holds() -> None:
    assert "non_root_user" not in _config.enforcement_overrides(plan(), _boot.Init.HELPER)
    status = _config.enforcement_overrides(plan(), _boot.Init.OWN)["non_root_user"]
    assert not status.enforced


def test_systemd_boots_with_capabilities_and_seccomp_lifted_and_says_so() -> None:
    systemd = plan(image="sandboxer/systemd", requirements={"init": True})
    overrides = _config.enforcement_overrides(systemd, _boot.Init.OWN)
    for control in ("capabilities", "seccomp"):
        assert not overrides[control].enforced and "systemd" in overrides[control].mechanism
    body = _config.instance_request(systemd, "f", "default", None, True, _boot.own(systemd, None))
    assert "raw.seccomp" not in body["config"]
    assert not any(line.startswith("lxc.cap") for line in body["config"]["raw.lxc"].splitlines())
    assert "lxc.no_new_privs = 1" in body["config"]["raw.lxc"]  # what it survives stays
    assert body["devices"]["root"]["readonly"] == "true"
    # Without an init requirement it is an image like any other: nothing lifted.
    assert not boots_systemd(plan(image="sandboxer/systemd"))


def test_systemd_takes_no_command() -> None:
    found = _refusals.refusals(
        plan(image="sandboxer/systemd", requirements={"init": True}, command=["x"])
    )
    assert any("boots systemd" in refusal for refusal in found)
    assert _refusals.refusals(plan(image="127.0.0.1:5000/app", command=["x"])) == []


# the converted tarball ---------------------------------------------------------------
def _hostile_tree(tmp_path: Path) -> Path:
    rootfs = tree(tmp_path)
    (rootfs / "bin").mkdir()
    tool = rootfs / "bin/tool"
    tool.write_bytes(b"\x7fELF tool")
    os.chown(tool, 0, 50)  # before the chmod: a chown clears setuid
    tool.chmod(0o4755)
    os.link(tool, rootfs / "bin/tool-again")
    (rootfs / "etc/shadow-link").symlink_to("/etc/shadow")  # absolute: the host's, if followed
    (rootfs / "up").symlink_to("../../..")
    (rootfs / MOUNT_POINT.lstrip("/")).mkdir()
    (rootfs / MOUNT_POINT.lstrip("/") / "planted").write_text("image content")
    (rootfs / "etc/hostname").symlink_to("/etc/hostname")  # Incus would write through it
    return rootfs


def _members(local: LocalImage) -> dict[str, tarfile.TarInfo]:
    data = b"".join(_oci.tarball(local, _oci.head(local, 0)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {member.name: member for member in tar.getmembers()}
        metadata = (tar.extractfile("metadata.yaml") or io.BytesIO()).read().decode()
    assert f'"sandboxer.digest": "{DIGEST}"' in metadata
    return members


def test_the_tarball_keeps_links_modes_and_owners_and_follows_nothing(tmp_path: Path) -> None:
    members = _members(image(_hostile_tree(tmp_path)))
    # One of the two names holds the data (whichever tar met first), the other links to it.
    first, second = sorted(
        (members["rootfs/bin/tool"], members["rootfs/bin/tool-again"]), key=lambda m: m.islnk()
    )
    assert stat.S_IMODE(first.mode) == 0o4755 and (first.uid, first.gid) == (0, 50)
    assert second.islnk() and second.linkname == first.name
    shadow = members["rootfs/etc/shadow-link"]
    assert shadow.issym() and shadow.linkname == "/etc/shadow" and shadow.size == 0
    assert members["rootfs/up"].linkname == "../../.."
    # The helper's mount point is ours: empty, whatever the image put there.
    assert members["rootfs" + MOUNT_POINT].isdir()
    assert "rootfs" + MOUNT_POINT + "/planted" not in members
    # Incus renders templates from the host: none goes through the image's links.
    assert "templates/etc-hostname.tpl" not in members
    assert "templates/etc-hosts.tpl" in members


def test_no_templates_where_etc_is_a_link(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "etc").symlink_to("/etc")
    assert _oci.safe_templates(rootfs) == {}


def test_a_failing_tar_is_an_engine_error(tmp_path: Path) -> None:
    with pytest.raises(sandboxer.EngineError, match="packing image"):
        b"".join(_oci.tarball(image(tmp_path / "missing"), b""))


def test_aliases_name_the_digest() -> None:
    assert _oci.alias(DIGEST) == "sandboxer/oci/" + "ab" * 8 + f".r{_metadata.TEMPLATES_REVISION}"
    assert subprocess.run(["tar", "--version"], capture_output=True).stdout.startswith(b"tar (GNU")


# the converted copy: found by its alias, trusted by its properties -----------------------
class _Node:
    def __init__(self, incus: _FakeIncus, path: tuple[str, ...]) -> None:
        self.incus, self.path = incus, path

    def __getitem__(self, name: str) -> _Node:
        return _Node(self.incus, (*self.path, name))

    def __getattr__(self, name: str) -> _Node:
        return self[name]

    def get(self) -> Any:
        table: dict[str, Any] = self.incus.aliases if "aliases" in self.path else self.incus.images
        metadata = table.get(self.path[-1])
        if metadata is None:
            raise _oci.pylxd.exceptions.NotFound(None)
        return type("Response", (), {"json": lambda _: {"metadata": metadata}})()

    def post(self, **request: Any) -> Any:
        if "aliases" in self.path:  # an alias
            name = request["json"]["name"]
            if name in self.incus.aliases:
                raise sandboxer.EngineError("alias already exists")
            self.incus.aliases[name] = {"target": request["json"]["target"]}
            return None
        self.incus.images["new"] = {"properties": {_oci.DIGEST_PROPERTY: DIGEST}}
        return {"metadata": {"fingerprint": "new"}}

    def put(self, json: dict[str, str]) -> None:
        self.incus.aliases[self.path[-1]] = {"target": json["target"]}


class _FakeIncus:
    def __init__(self) -> None:
        self.images: dict[str, dict[str, Any]] = {}
        self.aliases: dict[str, dict[str, str]] = {}
        self.api = _Node(self, ())

    def wait(self, response: Any, timeout: float = 0) -> Any:
        return response


@pytest.mark.parametrize("planted", [{}, {"sandboxer.digest": "sha256:" + "cd" * 32}])
def test_an_alias_to_another_image_is_never_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: dict[str, str]
) -> None:
    """A stale or planted sandboxer/oci/<digest> alias: converted again, and the alias
    names the verified copy from then on."""
    monkeypatch.setenv("SANDBOXER_IMAGE_DIR", str(tmp_path / "store"))
    incus = _FakeIncus()
    incus.images["other"] = {"properties": planted}
    incus.aliases[_oci.alias(DIGEST)] = {"target": "other"}
    converter = _oci.Converter(incus)  # type: ignore[arg-type]
    assert converter.fingerprint(image(tmp_path)) == "new"
    assert incus.aliases[_oci.alias(DIGEST)] == {"target": "new"}
    assert converter.fingerprint(image(tmp_path)) == "new"  # found, not converted again


# environment variables set to "" -----------------------------------------------------
def test_an_empty_variable_reaches_pid_1_and_exec(tmp_path: Path, helper: None) -> None:
    """Incus reads an `environment.KEY` of "" as unset."""
    config = ImageConfig(env=(("EMPTY", ""), ("PATH", "/bin")))
    launch = plan(profile="default", env={"ALSO": ""})
    boot = _boot.helper(launch, image(tree(tmp_path), config))
    assert boot.empty_environment == ("ALSO", "EMPTY")
    assert boot.lines()[-2:] == ["lxc.environment = ALSO=", "lxc.environment = EMPTY="]
    keys = _config.instance_request(launch, "f" * 64, "default", None, True, boot)["config"]
    assert "environment.EMPTY" not in keys and keys["environment.PATH"] == "/bin"
    assert _config.empty_environment(keys) == ("ALSO", "EMPTY")
    assert _config.empty_environment({_config.EMPTY_ENV_KEY: "garbled"}) == ()


def test_a_named_user_the_image_makes_root_is_refused_under_non_root_user(
    tmp_path: Path, helper: None
) -> None:
    rootfs = tree(tmp_path)
    (rootfs / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:0:0::/:/bin/sh\n")
    named = sandboxer.load_profile("default").derive("named-user", user="app")
    with pytest.raises(sandboxer.InvalidSpec, match="uid 0 in the image's /etc/passwd"):
        _boot.helper(plan(profile=named), image(rootfs))
    # Root asked for by name is the spec's choice, reported relaxed: it runs.
    assert _boot.helper(plan(profile=named, user="root"), image(rootfs)).identity == (
        _boot.Identity(0, 0, "/root")
    )
    assert _boot.helper(plan(profile="default", user="app"), image(rootfs)).identity is not None
