"""Docker named networks: the driver against a recording fake API, and how a plan's named
networks become container arguments (no engine)."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxer import SandboxExists, SandboxSpec
from sandboxer._launch import make_plan
from sandboxer.backend import LAUNCH, MANAGED
from sandboxer.backends.docker import DockerBackend, _named_networks
from sandboxer.backends.docker._config import create_arguments, first_link, joined_later
from sandboxer.backends.docker._images import ReadyImage
from sandboxer.backends.docker._network import BRIDGE, ROLE
from sandboxer.backends.docker._sdk import docker
from sandboxer.images import ImageConfig

BUILTIN = ReadyImage("sandboxer/minimal:1", ImageConfig(), builtin=True)
OURS = {MANAGED: "true", LAUNCH: "net-launch"}


def network(name: str, labels: dict[str, str], internal: bool = False) -> dict[str, Any]:
    return {
        "Name": name,
        "Id": f"id-{name}",
        "Internal": internal,
        "Labels": labels,
        "IPAM": {"Config": [{"Subnet": "10.140.7.0/24", "Gateway": "10.140.7.1"}]},
    }


class _Conflict:
    status_code = 409
    reason = "Conflict"
    url = "http+docker://localhost/networks/create"


class FakeApi:
    def __init__(self, *existing: dict[str, Any], race: bool = False) -> None:
        self.existing = list(existing)
        self.created: list[dict[str, Any]] = []
        self.removed: list[str] = []
        self.race = race

    def networks(self, names: list[str] | None = None, **_: Any) -> list[dict[str, Any]]:
        # Docker's name filter also matches parts of names.
        return [n for n in self.existing if not names or any(x in n["Name"] for x in names)]

    def create_network(self, name: str, **options: Any) -> dict[str, str]:
        if self.race:
            raise docker.errors.APIError("network with name exists", response=_Conflict())
        self.created.append({"Name": name, **options})
        self.existing.append(network(name, options["labels"], options["internal"]))
        return {"Id": f"id-{name}"}

    def remove_network(self, network_id: str) -> None:
        self.removed.append(network_id)


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    calls: list[bool] = []
    monkeypatch.setattr(_named_networks, "socket_path", lambda: "/run/docker.sock")
    monkeypatch.setattr(_named_networks.os, "geteuid", lambda: 0)
    monkeypatch.setattr(_named_networks, "guard_network_bridges", lambda: calls.append(True))
    return calls


def test_an_internal_network_has_no_host_address_and_a_guarded_bridge(
    guarded: list[bool],
) -> None:
    api = FakeApi()
    info = _named_networks.DockerNetworks(api).create(
        "net", internal=True, subnet="10.140.7.0/24", labels=OURS
    )
    (created,) = api.created
    assert created["internal"] is True and created["driver"] == "bridge"
    assert created["options"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
    assert created["options"]["com.docker.network.bridge.name"].startswith("sbi")
    assert len(created["options"]["com.docker.network.bridge.name"]) <= 15
    [pool] = created["ipam"]["Config"]
    assert (pool["Subnet"], pool["Gateway"]) == ("10.140.7.0/24", "10.140.7.1")
    assert created["labels"] == {**OURS, ROLE: "named"}
    assert guarded == [True]
    assert (info.name, info.internal, info.subnet, info.backend) == (
        "net",
        True,
        "10.140.7.0/24",
        "docker",
    )


def test_a_nat_network_is_a_guarded_bridge_with_a_way_out(guarded: list[bool]) -> None:
    api = FakeApi()
    _named_networks.DockerNetworks(api).create(
        "net", internal=False, subnet="10.140.7.0/24", labels=OURS
    )
    (created,) = api.created
    assert created["internal"] is False
    # No inhibit_ipv4: the gateway is its way out; its name is what the guard matches.
    assert list(created["options"]) == ["com.docker.network.bridge.name"]
    assert created["options"]["com.docker.network.bridge.name"].startswith("sbn")
    assert guarded == [True]


@pytest.mark.parametrize("labels", [OURS, {}])
def test_a_taken_name_is_refused_ours_or_not(labels: dict[str, str]) -> None:
    api = FakeApi(network("net", labels))
    with pytest.raises(SandboxExists):
        _named_networks.DockerNetworks(api).create(
            "net", internal=False, subnet="10.140.7.0/24", labels=OURS
        )
    assert api.created == []


def test_a_name_taken_meanwhile_is_refused() -> None:
    with pytest.raises(SandboxExists):
        _named_networks.DockerNetworks(FakeApi(race=True)).create(
            "net", internal=False, subnet="10.140.7.0/24", labels=OURS
        )


def test_inspect_finds_the_exact_name_only() -> None:
    api = FakeApi(network("net-2", {}), network("net", {"a": "b"}, internal=True))
    driver = _named_networks.DockerNetworks(api)
    found = driver.inspect("net")
    assert found is not None and found.labels == {"a": "b"} and found.internal
    assert driver.inspect("ne") is None


def test_list_holds_named_networks_ours_or_not_and_nothing_else() -> None:
    named = {**OURS, ROLE: "named"}
    api = FakeApi(
        network("bridge", {}),
        network("host", {}),
        network("none", {}),
        network(BRIDGE, {MANAGED: "true", ROLE: "bridge"}),
        network("sbx-1", OURS, internal=True),  # a sandbox's private network
        network("theirs", {}),
        network("mine", named),
    )
    found = _named_networks.DockerNetworks(api).list()
    assert [n.name for n in found] == ["theirs", "mine"]


def test_remove_takes_only_our_named_networks() -> None:
    api = FakeApi(
        network("theirs", {}),
        network("sbx-1", OURS),
        network("mine", {**OURS, ROLE: "named"}),
    )
    driver = _named_networks.DockerNetworks(api)
    for name in ("theirs", "sbx-1", "mine", "absent"):
        driver.remove(name)
    assert api.removed == ["id-mine"]


def test_named_networks_are_no_sandbox_leftovers() -> None:
    class API:
        def networks(self, **_: Any) -> list[dict[str, Any]]:
            return [
                network("sbx-1", {**OURS, LAUNCH: "gone"}),
                network("mine", {**OURS, ROLE: "named"}),
            ]

        def containers(self, **_: Any) -> list[dict[str, Any]]:
            return []

    backend = object.__new__(DockerBackend)
    backend._api = API()
    assert [info.name for info in backend.leftovers()] == ["sbx-1"]


def test_on_named_networks_only_the_first_is_the_containers_network() -> None:
    plan = make_plan(SandboxSpec(networks=["a", "b"], hostname="web"))
    assert first_link(plan) == "a" and joined_later(plan) == ("b",)
    args = create_arguments(plan, BUILTIN, first_link(plan))
    assert "network_mode" not in args and args["network"] == "a"
    # Its name alone: a host name may be a peer's name, and would take it over.
    assert args["networking_config"] == {"a": {"Aliases": [plan.name]}}


@pytest.mark.parametrize("mode", ["isolated", "bridge"])
def test_beside_a_default_link_every_named_network_joins_later(mode: str) -> None:
    plan = make_plan(SandboxSpec(networks=["a", "b"], network=mode))
    assert first_link(plan) is None and joined_later(plan) == ("a", "b")
    args = create_arguments(plan, BUILTIN, "private-id")
    assert args["network"] == "private-id" and "networking_config" not in args


def test_without_named_networks_none_stays_loopback_only() -> None:
    plan = make_plan(SandboxSpec(network="none"))
    assert first_link(plan) is None and joined_later(plan) == ()
    assert create_arguments(plan, BUILTIN, None)["network_mode"] == "none"


class RouteApi:
    """A running container on the given networks."""

    def __init__(self, *networks: dict[str, Any], pid: int = 42) -> None:
        self.by_id = {n["Id"]: n for n in networks}
        self.pid = pid

    def inspect_container(self, container: str) -> dict[str, Any]:
        attached = {n["Name"]: {"NetworkID": n["Id"]} for n in self.by_id.values()}
        return {"State": {"Pid": self.pid}, "NetworkSettings": {"Networks": attached}}

    def inspect_network(self, network_id: str) -> dict[str, Any]:
        return self.by_id[network_id]


NAMED_INTERNAL = network("mine", {**OURS, ROLE: "named"}, internal=True)


@pytest.mark.parametrize(
    ("networks", "dropped"),
    [
        ([NAMED_INTERNAL], True),
        ([NAMED_INTERNAL, network("sbx-1", OURS, internal=True)], True),  # and "isolated"
        ([NAMED_INTERNAL, network(BRIDGE, {MANAGED: "true", ROLE: "bridge"})], False),
        ([network("sbx-1", OURS, internal=True)], False),  # "isolated" alone: as before
    ],
)
def test_the_default_route_goes_only_where_every_network_is_internal(
    guarded: list[bool],
    monkeypatch: pytest.MonkeyPatch,
    networks: list[dict[str, Any]],
    dropped: bool,
) -> None:
    ran: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> Any:
        ran.append(argv)
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(_named_networks.subprocess, "run", run)
    _named_networks.DockerNetworks(RouteApi(*networks)).drop_default_route("c")
    if dropped:
        [argv] = ran
        assert argv[:2] == ["nsenter", "--net=/proc/42/ns/net"]
        assert argv[2:] == ["ip", "-4", "route", "flush", "exact", "0.0.0.0/0"]
    else:
        assert ran == []


def test_a_remote_engine_keeps_the_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_named_networks, "socket_path", lambda: None)
    monkeypatch.setattr(_named_networks.subprocess, "run", lambda *_, **__: pytest.fail())
    _named_networks.DockerNetworks(RouteApi(NAMED_INTERNAL)).drop_default_route("c")


def test_a_host_name_on_named_networks_is_refused_it_would_be_a_dns_name() -> None:
    plan = make_plan(SandboxSpec(networks=["a"], hostname="web", backend="docker"))
    assert any("hostname" in r for r in DockerBackend.refusals(plan))
    assert not DockerBackend.refusals(make_plan(SandboxSpec(networks=["a"])))
