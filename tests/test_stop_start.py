"""stop/start, host names, publish-all and the foreground command's entrypoint, on the
fake engine and in the pure parts (validation, image configs, pins)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxer
from sandboxer import InvalidSpec, PortMapping, SandboxSpec, SandboxState
from sandboxer._backend import ExecRequest, Handle
from sandboxer._gc import is_garbage
from sandboxer._labels import KEEP, PINS
from sandboxer._pinned import pinned_again, pins_label
from sandboxer._plan import make_plan
from sandboxer.backends.libvirt import LibvirtBackend
from sandboxer.backends.libvirt._restart import load_boot, save_boot
from sandboxer.cli import main
from sandboxer.images import ImageConfig
from sandboxer.testing import FakeBackend


@pytest.fixture(autouse=True)
def empty_engine() -> Iterator[None]:
    FakeBackend.sandboxes.clear()
    yield
    for name in list(FakeBackend.sandboxes):
        FakeBackend().remove(name, FakeBackend.sandboxes[name].plan.labels["sandboxer.launch"])


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# host names ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["web", "web-1", "a.b.example", "x" * 63, "1host"])
def test_rfc1123_host_names_are_taken(name: str) -> None:
    assert SandboxSpec(hostname=name).hostname == name


@pytest.mark.parametrize(
    "name", ["", "-web", "web-", "a..b", "under_score", "x" * 64, "sp ace", "a/b", 7]
)
def test_other_host_names_are_refused_naming_the_field(name: object) -> None:
    with pytest.raises(InvalidSpec, match=r"^hostname: expected an RFC 1123 host name"):
        SandboxSpec(hostname=name)  # type: ignore[arg-type]


def test_the_host_name_is_the_sandbox_name_unless_chosen() -> None:
    assert make_plan(SandboxSpec(name="box")).hostname == "box"
    assert make_plan(SandboxSpec(name="box", hostname="web.local")).hostname == "web.local"


def test_run_hostname_reaches_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--hostname", "a..b", "--", "true")
    assert code == 2 and "hostname: expected an RFC 1123 host name" in err
    code, _, _ = run_cli(capsys, "run", "--backend", "fake", "--hostname", "web", "--", "true")
    assert code == 0


# exposed ports -----------------------------------------------------------------------
def test_exposed_ports_are_read_sorted_and_written_back() -> None:
    document = {"config": {"ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "80": {}}}}
    config = ImageConfig.from_oci(document)
    assert config.exposed_ports == ((53, "udp"), (80, "tcp"), (8080, "tcp"))
    assert ImageConfig.from_oci({"config": config.to_json()}) == config
    assert ImageConfig.from_oci({"config": {}}).exposed_ports == ()


@pytest.mark.parametrize("ports", [["8080/tcp"], {"http/tcp": {}}, {"0/tcp": {}}, {"80/sctp": {}}])
def test_malformed_exposed_ports_are_refused(ports: object) -> None:
    with pytest.raises(ValueError, match="ExposedPorts"):
        ImageConfig.from_oci({"config": {"ExposedPorts": ports}})


def test_publish_all_adds_what_ports_does_not_map() -> None:
    spec = SandboxSpec(ports=[PortMapping(guest_port=80, host_port=8000)])
    published = spec.with_exposed([(80, "tcp"), (53, "udp"), (8080, "tcp")])
    assert [(p.guest_port, p.protocol, p.host_port) for p in published.ports] == [
        (80, "tcp", 8000),
        (53, "udp", None),
        (8080, "tcp", None),
    ]
    assert published.effective_network == "bridge"  # as with -p
    assert SandboxSpec().with_exposed([]) == SandboxSpec()
    with pytest.raises(InvalidSpec, match="publish_all"):
        SandboxSpec(publish_all="yes")  # type: ignore[arg-type]


def test_launch_publishes_the_image_exposed_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ImageConfig(exposed_ports=((8080, "tcp"),))
    monkeypatch.setattr(FakeBackend, "image_config", lambda self, image, pull: config)
    with sandboxer.launch(backend="fake", publish_all=True) as sb:
        host_ip, host_port = sb.ports[8080]
        assert host_ip == "127.0.0.1" and host_port > 0
    with sandboxer.launch(backend="fake") as sb:
        assert sb.ports == {}


def test_built_in_images_expose_nothing() -> None:
    assert FakeBackend().image_config("sandboxer/minimal", sandboxer.PullPolicy.NEVER) == (
        ImageConfig()
    )


# foreground run: the image's entrypoint ---------------------------------------------
def test_foreground_run_applies_the_image_entrypoint_and_cmd(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ImageConfig(entrypoint=("echo", "entry"), cmd=("default",))
    monkeypatch.setattr(FakeBackend, "image_config", lambda self, image, pull: config)
    run = ("run", "--backend", "fake", "sandboxer/minimal")
    assert run_cli(capsys, *run)[:2] == (0, "entry default\n")  # Entrypoint + Cmd
    assert run_cli(capsys, *run, "given")[:2] == (0, "entry given\n")  # COMMAND replaces Cmd
    # --entrypoint replaces the image's and drops its Cmd, as Docker does.
    replaced = ("run", "--backend", "fake", "--entrypoint", "echo", "sandboxer/minimal", "x")
    assert run_cli(capsys, *replaced)[:2] == (0, "x\n")


def test_foreground_run_with_nothing_to_run_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--backend", "fake", "sandboxer/minimal")
    assert code == 2 and "COMMAND: nothing to run" in err
    assert FakeBackend.sandboxes == {}


# stop and start ----------------------------------------------------------------------
def test_stop_and_start_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    sb = sandboxer.launch(backend="fake", name="one", keep=True)
    code, out, err = run_cli(capsys, "stop", "-t", "0", "one", "gone")
    assert code == 125 and out.split() == ["one"] and "'gone'" in err
    assert sb.state is SandboxState.STOPPED
    code, out, _ = run_cli(capsys, "start", "--json", "one")
    assert code == 0 and json.loads(out) == {"started": ["one"], "failures": {}}
    assert sb.state is SandboxState.RUNNING
    assert sb.exec(["echo", "back"]).stdout == b"back\n"
    code, _, err = run_cli(capsys, "stop", "-t", "-1", "one")
    assert code == 2 and "--time" in err


def test_gc_keeps_stopped_sandboxes_as_running_ones() -> None:
    with sandboxer.launch(backend="fake") as sb:
        sb.stop()
        info = sandboxer.attach(sb.name, ["fake"])
        labels = dict(sb.labels)
        stopped = sandboxer.SandboxInfo("fake", sb.id, sb.name, SandboxState.STOPPED, labels)
        now = time.time()
        assert is_garbage(stopped, older_than=None, session=None, now=now) is None  # owner lives
        kept = sandboxer.SandboxInfo(
            "fake", sb.id, sb.name, SandboxState.STOPPED, {**labels, KEEP: "true"}
        )
        assert is_garbage(kept, older_than=0, session=None, now=now + 10) is None
        assert info.state is SandboxState.STOPPED
        assert sandboxer.gc(backends=["fake"]) == []


# pins --------------------------------------------------------------------------------
def test_pins_are_recorded_only_when_made(tmp_path: Path) -> None:
    mount = sandboxer.Mount(str(tmp_path), "/data")
    assert pins_label([mount], {}) == {}
    pinned = "/run/sandboxer/pinned/" + "a" * 32 + "/0"
    label = json.loads(pins_label([mount], {mount.source: pinned})[PINS])
    assert label == [[pinned, mount.source, *mount.identity]]


@pytest.mark.parametrize(
    "entries",
    [[["/etc", "/tmp", 1, 2]], [["/run/sandboxer/pinned/x/0", "/tmp", 1, 2]], "not json", [[1]]],
)
def test_a_forged_pins_label_mounts_nothing(entries: object) -> None:
    text = entries if isinstance(entries, str) else json.dumps(entries)
    with pytest.raises(sandboxer.EngineError), pinned_again({PINS: text}):
        pass


def test_start_after_destroy_and_the_async_start() -> None:
    async def stop_and_start() -> bytes:
        async with sandboxer.aio.launch(backend="fake") as sb:
            await sb.stop()
            assert await sb.state() is SandboxState.STOPPED
            await sb.start()
            return (await sb.exec(["echo", "ok"])).stdout

    assert asyncio.run(stop_and_start()) == b"ok\n"
    sb = sandboxer.launch(backend="fake")
    sb.destroy()
    with pytest.raises(sandboxer.SandboxNotFound):
        sb.start()


def test_a_vm_boot_record_keeps_the_xml_with_its_uuid_and_the_main_process(
    tmp_path: Path,
) -> None:
    main = ExecRequest(
        argv=("sleep", "9"), env={"A": "1"}, workdir="/w", user="1000:1000", stdin=None,
        timeout=None,
    )  # fmt: skip
    xml = "<domain type='qemu'><name>box</name><memory>1</memory></domain>"
    uuid = "6f1c9a3e-2b4d-4e8f-9a1b-3c5d7e9f1a2b"
    save_boot(tmp_path, xml, uuid, main)
    record = load_boot(tmp_path)
    assert record is not None and record.uuid == uuid and record.main == main
    assert "<name>box</name><uuid>" in record.xml  # libvirt's order: name, then uuid
    assert (tmp_path / "boot.json").stat().st_mode & 0o077 == 0
    save_boot(tmp_path, record.xml, uuid, None)  # saved again: one uuid, no main
    again = load_boot(tmp_path)
    assert again is not None and again.main is None and again.xml.count("<uuid>") == 1
    assert load_boot(tmp_path / "missing") is None  # a disk image's sandbox: no record


def test_a_vm_without_a_boot_record_is_not_started_again(tmp_path: Path) -> None:
    # A disk image's sandbox: cloud-init's set-up runs once, so no record is kept.
    backend = object.__new__(LibvirtBackend)  # no connection: refused before any engine call
    backend._root = tmp_path
    (tmp_path / "run" / "box").mkdir(parents=True)
    with pytest.raises(sandboxer.UnsupportedFeature, match="disk image"):
        backend.start(Handle("6f1c9a3e-2b4d-4e8f-9a1b-3c5d7e9f1a2b", "box"))


def test_run_publish_all_and_hostname_reach_the_launch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ImageConfig(exposed_ports=((8080, "tcp"), (53, "udp")))
    monkeypatch.setattr(FakeBackend, "image_config", lambda self, image, pull: config)
    argv = ("run", "-d", "-P", "--hostname", "web", "--backend", "fake", "sandboxer/minimal")
    code, out, _ = run_cli(capsys, *argv)
    plan = FakeBackend.sandboxes[out.strip()].plan
    assert code == 0 and plan.hostname == "web"
    assert sorted((p.guest_port, p.protocol) for p in plan.ports) == [(53, "udp"), (8080, "tcp")]
    assert all(p.host_ip == "127.0.0.1" and p.host_port for p in plan.ports)
