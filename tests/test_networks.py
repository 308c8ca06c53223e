"""Named networks from the user's side, on the fake engine: `network create|ls|rm`,
`run --network`, and what `gc` removes (never anything foreign)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kits.owners import dead_owner

import sandboxer
from sandboxer import Network, SandboxError
from sandboxer._labels import KEEP, MANAGED, OWNER
from sandboxer.cli import build_parser, main
from sandboxer.cli._run_argv import canonical_argv
from sandboxer.cli._spec import spec_from
from sandboxer.testing import FakeBackend


@pytest.fixture(autouse=True)
def only_fake(only_fake_engines: None) -> Iterator[None]:
    """Only the fake engine; its networks are gone afterwards."""
    yield
    FakeBackend.network_store.clear()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def foreign(name: str) -> None:
    """A network made on the engine behind sandboxer's back."""
    FakeBackend().networks().create(
        name, internal=False, subnet="10.150.9.0/24", labels={"made-by": "someone else"}
    )


def spec_of(*argv: str) -> sandboxer.SandboxSpec:
    parser = build_parser()
    return spec_from(parser.parse_args(canonical_argv(parser, ["run", *argv, "--", "true"])))


# network create / ls / rm ------------------------------------------------------------
def test_create_makes_a_kept_network_and_prints_its_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(
        capsys, "network", "create", "--internal", "--subnet", "10.150.3.0/24", "-l", "a=b", "n1"
    )
    assert (code, out, err) == (0, "n1\n", "")
    made = Network.get("n1", "fake")
    assert made.ours and made.kept and made.internal and made.subnet == "10.150.3.0/24"
    assert made.labels["a"] == "b" and made.labels[KEEP] == "true"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bad name"], "NAME: expected a network name"),
        (["--subnet", "8.8.8.0/24", "n"], "--subnet: expected a private IPv4 network"),
        (["--subnet", "nonsense", "n"], "--subnet: expected an IPv4 network"),
        (["-l", "novalue", "n"], "--label: expected K=V"),
        (["-l", "sandboxer.managed=x", "n"], "-l: the prefix 'sandboxer.' is reserved"),
        (["--backend", "nosuch", "n"], "nosuch"),
    ],
)
def test_bad_create_arguments_exit_2_naming_them(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "network", "create", "--backend", "fake", *argv)
    assert (code, out) == (2, "") and message in err
    assert FakeBackend.network_store == {}


def test_a_taken_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    foreign("taken")
    code, _, err = run_cli(capsys, "network", "create", "taken")
    assert code == 125 and "fake has a network called 'taken' already" in err
    assert MANAGED not in FakeBackend.network_store["taken"].labels


def test_ls_shows_ours_with_their_users_and_filters_by_label(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli(capsys, "network", "create", "--internal", "-l", "team=a", "inner")[0] == 0
    assert run_cli(capsys, "network", "create", "outer")[0] == 0
    foreign("theirs")
    with sandboxer.launch(backend="fake", networks=["inner"]) as member:
        code, out, _ = run_cli(capsys, "network", "ls", "--json")
        listed = {n["name"]: n for n in json.loads(out)}
        assert code == 0 and sorted(listed) == ["inner", "outer"]
        inner = listed["inner"]
        assert inner["backend"] == "fake" and inner["internal"] is True and inner["kept"]
        assert inner["users"] == [member.name] and inner["labels"]["team"] == "a"
        assert listed["outer"]["internal"] is False and listed["outer"]["users"] == []
        code, out, _ = run_cli(capsys, "network", "ls")
        header, *rows = out.splitlines()
        assert header.split() == ["BACKEND", "NAME", "INTERNAL", "SUBNET", "KEPT", "USERS"]
        assert rows[0].split() == ["fake", "inner", "yes", inner["subnet"], "yes", member.name]
    assert run_cli(capsys, "network", "ls", "-q", "--label", "team=a")[1] == "inner\n"
    assert run_cli(capsys, "network", "ls", "-q", "--backend", "fake")[1] == "inner\nouter\n"


def test_rm_refuses_networks_in_use_and_foreign_ones(capsys: pytest.CaptureFixture[str]) -> None:
    Network.create("busy", backend="fake")
    Network.create("idle", backend="fake")
    foreign("theirs")
    with sandboxer.launch(backend="fake", networks=["busy"]) as member:
        code, out, err = run_cli(capsys, "network", "rm", "busy", "idle", "theirs", "gone")
        assert (code, out) == (125, "idle\n")
        assert f"busy: network 'busy' is in use by sandbox {member.name}" in err
        assert "theirs: NAME: no network of ours is called 'theirs'" in err
        assert "gone: NAME: no network of ours is called 'gone'" in err
        code, _, err = run_cli(capsys, "network", "rm", "--backend", "fake", "theirs")
        assert code == 125 and "was not made by sandboxer" in err
    assert run_cli(capsys, "network", "rm", "busy")[:2] == (0, "busy\n")
    assert sorted(FakeBackend.network_store) == ["theirs"]


# run --network -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, network, networks",
    [
        ([], None, ()),
        (["--network", "bridge"], "bridge", ()),
        (["--network", "appnet"], "none", ("appnet",)),  # docker: named ones alone
        (["--network", "appnet", "-p", "8080"], None, ("appnet",)),  # ports need a link
        (["--network", "appnet", "-P"], None, ("appnet",)),
        (["--network", "isolated", "--net", "a", "--network=b"], "isolated", ("a", "b")),
        (["--net", "none", "--network", "none"], "none", ()),
    ],
)
def test_run_network_takes_a_mode_or_named_networks(
    argv: list[str], network: str | None, networks: tuple[str, ...]
) -> None:
    spec = spec_of(*argv)
    assert (spec.network, spec.networks) == (network, networks)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--network", "bridge", "--network", "none"], "--network: one mode at most"),
        (["--network", "a b"], "--network: expected a network name"),
        (["--network", "a", "--network", "a"], "--network: 'a' is listed twice"),
        (["--network", "nowhere"], "--network: no network 'nowhere' on fake"),
    ],
)
def test_bad_run_networks_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "run", "--backend", "fake", *argv, "--", "true")
    assert (code, out) == (2, "") and message in err
    assert FakeBackend.sandboxes == {}


def test_run_joins_a_named_network(capsys: pytest.CaptureFixture[str]) -> None:
    Network.create("appnet", backend="fake")
    code, _, err = run_cli(
        capsys, "run", "--network", "appnet", "-d", "--name", "member", "--", "true"
    )
    assert (code, err) == (0, "")
    assert Network.get("appnet", "fake").users() == ["member"]


# gc ----------------------------------------------------------------------------------
def leftovers() -> dict[str, Network]:
    """One network of each kind gc must tell apart, by name."""
    made = {
        "orphan": Network.create("orphan", backend="fake"),
        "kept": Network.create("kept", backend="fake", keep=True),
        "mine": Network.create("mine", backend="fake"),  # this process is alive
        "used": Network.create("used", backend="fake"),
    }
    for name in ("orphan", "kept", "used"):
        FakeBackend.network_store[name].labels[OWNER] = dead_owner()  # type: ignore[index]
    foreign("theirs")
    return made


def test_gc_removes_only_our_unused_networks_of_exited_owners(
    capsys: pytest.CaptureFixture[str],
) -> None:
    leftovers()
    with sandboxer.launch(backend="fake", networks=["used"]):
        code, out, _ = run_cli(capsys, "gc", "--all-sessions", "--dry-run", "--json")
        assert code == 0 and json.loads(out)["networks"] == [{"backend": "fake", "name": "orphan"}]
        assert "orphan" in FakeBackend.network_store
        code, out, _ = run_cli(capsys, "gc", "--all-sessions")
        assert (code, out) == (0, "removed network fake/orphan\n")
    assert sorted(FakeBackend.network_store) == ["kept", "mine", "theirs", "used"]
    # Its last member gone, `used` goes too; a kept one stays until asked.
    assert [n.name for n in sandboxer.gc_networks()] == ["used"]
    assert sorted(FakeBackend.network_store) == ["kept", "mine", "theirs"]


def test_gc_reports_an_engine_failing_and_still_does_the_rest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    leftovers()

    def broken(self: Any) -> Any:
        raise SandboxError("the engine is down")

    monkeypatch.setattr(FakeBackend, "networks", broken)
    sandboxer.Volume.create("leftover", backend="fake")
    code, out, err = run_cli(capsys, "gc", "--all-sessions", "--volumes", "--json")
    report = json.loads(out)
    assert code == 125 and report["failures"] == {"networks on fake": "the engine is down"}
    assert report["volumes"] == [{"backend": "fake", "name": "leftover"}]
    assert "networks on fake: the engine is down" in err
    assert "orphan" in FakeBackend.network_store


def test_an_engine_without_networks_is_passed_over(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeBackend, "networks", sandboxer.backend.Backend.networks)
    code, out, err = run_cli(capsys, "gc", "--all-sessions")
    assert (code, out) == (0, "") and "nothing to remove" in err
    code, _, err = run_cli(capsys, "network", "create", "n")
    assert code == 125 and "n" in err
