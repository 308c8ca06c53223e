"""The Docker networks behind "isolated" and "bridge", against a recording fake API."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxer import EngineError
from sandboxer.backends.docker import _network
from sandboxer.backends.docker._sdk import docker


class _Response:
    status_code = 409
    reason = "Conflict"
    url = "http+docker://localhost/networks/create"


class FakeApi:
    def __init__(self, existing: list[dict[str, Any]] | None = None, race: bool = False) -> None:
        self.existing = existing or []
        self.created: list[dict[str, Any]] = []
        self.race = race  # another process creates the bridge between our look and create

    def networks(self, names: list[str]) -> list[dict[str, Any]]:
        return [n for n in self.existing if n["Name"] in names]

    def create_network(self, name: str, **options: Any) -> dict[str, str]:
        if self.race:
            self.existing.append(ours())
            raise docker.errors.APIError("network with name exists", response=_Response())
        self.created.append({"Name": name, **options})
        return {"Id": f"id-{name}"}


class FakeClient:
    def __init__(self, api: FakeApi) -> None:
        self.api = api


def ours(**options: str) -> dict[str, Any]:
    return {
        "Name": _network.BRIDGE,
        "Id": "shared",
        "Labels": {_network.ROLE: "bridge"},
        "Options": {**_network.BRIDGE_OPTIONS, **options},
    }


def test_isolated_network_is_internal_with_no_host_address() -> None:
    api = FakeApi()
    made = _network.Networks(FakeClient(api)).create_private("sbx-1", {"k": "v"}, internal=True)
    assert made == "id-sbx-1"
    (created,) = api.created
    assert created["internal"] is True
    assert created["options"] == {"com.docker.network.bridge.inhibit_ipv4": "true"}
    assert created["labels"] == {"k": "v"} and created["check_duplicate"] is True


def test_the_shared_bridge_is_made_once_with_inter_container_traffic_off() -> None:
    api = FakeApi()
    networks = _network.Networks(FakeClient(api))
    assert networks.bridge() == networks.bridge() == f"id-{_network.BRIDGE}"
    (created,) = api.created
    assert created["options"] == {"com.docker.network.bridge.enable_icc": "false"}
    assert created["labels"] == {_network.ROLE: "bridge"}
    assert not created.get("internal")


def test_an_existing_shared_bridge_of_ours_is_reused() -> None:
    api = FakeApi([ours()])
    assert _network.Networks(FakeClient(api)).bridge() == "shared"
    assert api.created == []


@pytest.mark.parametrize(
    "network",
    [
        {**ours(), "Labels": {}},  # same name, not made by sandboxer
        ours(**{"com.docker.network.bridge.enable_icc": "true"}),
    ],
)
def test_a_bridge_that_breaks_the_promise_is_refused(network: dict[str, Any]) -> None:
    with pytest.raises(EngineError, match="inter-container traffic off"):
        _network.Networks(FakeClient(FakeApi([network]))).bridge()


def test_a_concurrent_create_is_settled_by_using_the_winner() -> None:
    assert _network.Networks(FakeClient(FakeApi(race=True))).bridge() == "shared"
