"""Session 6 attacks on named networks (real engines).

Each test is an attack that must fail for the promise to hold: members of different
named networks (or none) never reach each other in either direction, whatever engine
made them; a sandbox's own private engine network is no named network to join; a host
name never takes a peer's name; an internal network's DNS forwards nothing upstream.
Traffic goes only to our own sandboxes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer import Network, Sandbox
from sandboxer.backend import gateway as gateway_of
from sandboxer.testing import contract  # noqa: F401 - loads the contract before its parts
from sandboxer.testing._contract_networks import address_of, fetch_text, serve_text

MakeNetwork = Callable[..., Network]


def _name(kind: str) -> str:
    return f"sbx-a6-{kind}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def networks() -> Iterator[MakeNetwork]:
    made: list[Network] = []

    def create(backend: str, **fields: Any) -> Network:
        made.append(Network.create(_name("net"), backend=backend, **fields))
        return made[-1]

    yield create
    for network in made:
        network.remove()


@pytest.fixture
def sandboxes() -> Iterator[Callable[..., Sandbox]]:
    made: list[Sandbox] = []

    def launch(**fields: Any) -> Sandbox:
        made.append(sandboxer.launch(**{"name": _name("sb"), **fields}))
        serve_text(made[-1], made[-1].name)
        return made[-1]

    yield launch
    for sandbox in reversed(made):
        sandbox.destroy()


def _addresses(sandbox: Sandbox) -> list[str]:
    lines = sandbox.exec(["ip", "-4", "-o", "addr"]).stdout.decode().splitlines()
    found = [line.split()[3].split("/")[0] for line in lines if " inet " in line]
    return [a for a in found if not a.startswith("127.")]


def _reaches(source: Sandbox, target: Sandbox) -> list[str]:
    """The addresses of `target` that `source` fetches `target`'s page from."""
    return [a for a in _addresses(target) if target.name.encode() in fetch_text(source, a)]


# Two NAT (non-internal) named networks: nothing in the contract covers them -----------
@pytest.mark.parametrize("engine", ["docker", "incus"])
def test_members_of_two_nat_networks_never_reach_each_other(
    engine: str, networks: MakeNetwork, sandboxes: Callable[..., Sandbox]
) -> None:
    first, second = networks(engine), networks(engine)
    a = sandboxes(backend=engine, networks=[first])
    b = sandboxes(backend=engine, networks=[second])
    assert _reaches(a, b) == [] and _reaches(b, a) == [], (
        f"a on {first.subnet} {_addresses(a)}, b on {second.subnet} {_addresses(b)}: "
        f"a->b {_reaches(a, b)}, b->a {_reaches(b, a)}"
    )


@pytest.mark.parametrize("engine", ["docker", "incus"])
def test_a_bridge_sandbox_never_reaches_a_nat_network_member(
    engine: str, networks: MakeNetwork, sandboxes: Callable[..., Sandbox]
) -> None:
    named = networks(engine)
    member = sandboxes(backend=engine, networks=[named])
    outsider = sandboxes(backend=engine, network="bridge")
    assert _reaches(outsider, member) == [] and _reaches(member, outsider) == [], (
        f"member {_addresses(member)}, outsider on bridge {_addresses(outsider)}"
    )


def test_an_incus_member_never_reaches_a_docker_member(
    networks: MakeNetwork, sandboxes: Callable[..., Sandbox]
) -> None:
    """Across engines: Incus accepts everything in and out of its NAT bridges in FORWARD,
    ahead of Docker's per-bridge rules."""
    docker_member = sandboxes(backend="docker", networks=[networks("docker")])
    incus_member = sandboxes(backend="incus", networks=[networks("incus")])
    reached = {
        "incus->docker": _reaches(incus_member, docker_member),
        "docker->incus": _reaches(docker_member, incus_member),
    }
    assert reached == {"incus->docker": [], "docker->incus": []}


def test_a_libvirt_member_never_reaches_docker_or_incus_members(
    networks: MakeNetwork, sandboxes: Callable[..., Sandbox]
) -> None:
    """libvirt's LIBVIRT_FWO accepts anything from a NAT network's subnet, ahead of
    Docker's and Incus's rules for their own bridges. One VM."""
    docker_member = sandboxes(backend="docker", networks=[networks("docker")])
    incus_member = sandboxes(backend="incus", networks=[networks("incus")])
    vm = sandboxes(backend="libvirt", networks=[networks("libvirt")])
    reached = {
        "libvirt->docker": _reaches(vm, docker_member),
        "libvirt->incus": _reaches(vm, incus_member),
        "docker->libvirt": _reaches(docker_member, vm),
        "incus->libvirt": _reaches(incus_member, vm),
    }
    assert reached == {k: [] for k in reached}, _addresses(vm)


def test_a_docker_network_name_does_not_block_a_sandbox_of_that_name(
    networks: MakeNetwork,
) -> None:
    """Network names and sandbox names are separate: Docker names a sandbox's private
    network after the sandbox, in the same namespace as named networks."""
    taken = networks("docker")
    with sandboxer.launch(backend="docker", name=taken.name, network="isolated") as box:
        assert box.exec(["true"]).exit_code == 0


# A sandbox's private engine network is not a named network ---------------------------
def test_a_sandbox_private_network_cannot_be_joined_by_its_name(
    sandboxes: Callable[..., Sandbox],
) -> None:
    """Docker names the private network behind "isolated" after the sandbox, with our
    labels: `networks=[victim]` must be refused, not join the victim's private link."""
    victim = sandboxes(backend="docker", network="isolated")
    try:
        intruder = sandboxes(backend="docker", networks=[victim.name])
    except sandboxer.InvalidSpec:
        return
    reached = _reaches(intruder, victim)
    by_name = victim.name.encode() in fetch_text(intruder, victim.name)
    pytest.fail(
        f"networks=[{victim.name!r}] (its private network) was accepted: intruder "
        f"{_addresses(intruder)} reaches victim at {reached}, by name: {by_name}"
    )


def test_a_sandbox_private_network_is_not_a_named_network() -> None:
    """Network.get of a sandbox's private network: what `network rm` and check_networks
    act on. It is not listed as a named network, so it must not be found as one."""
    victim = sandboxer.launch(backend="docker", name=_name("sb"), network="isolated")
    try:
        with pytest.raises(sandboxer.SandboxNotFound):
            Network.get(victim.name, "docker")
    finally:
        victim.destroy()


# Names: a host name equal to a peer's name ------------------------------------------
@pytest.mark.parametrize("engine", ["docker", "incus"])
def test_a_hostname_never_takes_a_peers_name(
    engine: str, networks: MakeNetwork, sandboxes: Callable[..., Sandbox]
) -> None:
    shared = networks(engine, internal=True)
    tag = uuid.uuid4().hex[:8]
    # The impostor's name sorts first: /etc/hosts lines are written in name order.
    owner = sandboxes(backend=engine, networks=[shared], name=f"sbx-a6-z-{tag}")
    try:
        impostor = sandboxes(
            backend=engine, networks=[shared], name=f"sbx-a6-a-{tag}", hostname=owner.name
        )
    except (sandboxer.InvalidSpec, sandboxer.UnsupportedFeature):
        return  # refused: fine
    client = sandboxes(backend=engine, networks=[shared], name=f"sbx-a6-m-{tag}")
    got = [fetch_text(client, owner.name) for _ in range(10)]
    answered = [impostor.name if impostor.name.encode() in b else b.decode()[-20:] for b in got]
    assert all(owner.name.encode() in body for body in got), answered


def test_libvirt_a_hostname_like_a_peers_name_leaves_removal_working() -> None:
    """libvirt deletes a DNS host record by matching its address or any of its names:
    two records sharing a name make every delete "multiple matching DNS HOST records",
    so neither sandbox can be removed (rm, gc) and both leak with their network."""
    network = Network.create(_name("net"), backend="libvirt", internal=True)
    made: list[Sandbox] = []
    try:
        made.append(sandboxer.launch(backend="libvirt", name=_name("sb"), networks=[network]))
        with contextlib.suppress(sandboxer.InvalidSpec):  # refused: fine
            made.append(
                sandboxer.launch(
                    backend="libvirt",
                    name=_name("sb"),
                    networks=[network],
                    hostname=made[0].name,
                )
            )
        errors = []
        for sandbox in reversed(made):
            try:
                sandbox.destroy()
            except sandboxer.SandboxError as exc:
                errors.append(f"{sandbox.name}: {exc}")
        assert errors == []
    finally:
        _force_cleanup(network, made)


def _force_cleanup(network: Network, made: list[Sandbox]) -> None:
    """What sandboxer could not remove: the network by libvirt's own means first (then
    `leave` finds no record to delete), then the sandboxes."""
    if not any(n.name == network.name for n in Network.list("libvirt")):
        return
    for step in ("net-destroy", "net-undefine"):
        subprocess.run(["virsh", step, f"sandboxer-{network.name}"], capture_output=True)
    for sandbox in made:
        sandbox.destroy()


# Internal networks' DNS forwards nothing ---------------------------------------------
def test_libvirt_internal_dnsmasq_forwards_nothing(networks: MakeNetwork) -> None:
    internal = networks("libvirt", internal=True)
    conf = Path(f"/var/lib/libvirt/dnsmasq/sandboxer-{internal.name}.conf").read_text()
    assert "no-resolv" in conf and "server=" not in conf, conf


def test_incus_internal_dnsmasq_forwards_nothing(networks: MakeNetwork) -> None:
    from sandboxer.backends.incus._named_networks import engine_name

    internal = networks("incus", internal=True)
    bridge = engine_name(internal.name, True)
    raw = Path(f"/var/lib/incus/networks/{bridge}/dnsmasq.raw").read_text()
    pids = subprocess.run(["pgrep", "-f", f"dnsmasq.*{bridge}"], capture_output=True, text=True)
    cmdlines = [
        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        for pid in pids.stdout.split()
    ]
    assert "no-resolv" in raw, raw
    assert cmdlines and not any("--server" in c for c in cmdlines), cmdlines


@pytest.mark.parametrize("engine", ["docker", "incus"])
def test_an_unnetworked_sandbox_never_reaches_a_member(
    engine: str, networks: MakeNetwork, sandboxes: Callable[..., Sandbox]
) -> None:
    """network="isolated" (no named network) against a member of an internal network."""
    member = sandboxes(backend=engine, networks=[networks(engine, internal=True)])
    loner = sandboxes(backend=engine, network="isolated")
    where = f"member {_addresses(member)}, loner {_addresses(loner)}"
    assert member.name.encode() not in fetch_text(loner, address_of(member)), where
    assert _reaches(member, loner) == [], where


# A launch that fails on a taken name leaves the live namesake's bookkeeping alone ----
@pytest.mark.parametrize("engine", ["docker", "incus", "libvirt"])
def test_a_namesake_launch_does_not_take_a_members_name_or_address(
    engine: str, networks: MakeNetwork, sandboxes: Callable[..., Sandbox]
) -> None:
    """Incus records a member's DNS name and address before the instance exists: a
    second launch of the same name (refused: SandboxExists) must not overwrite and then
    drop the live member's record."""
    shared = networks(engine, internal=True)
    owner = sandboxes(backend=engine, networks=[shared])
    with pytest.raises(sandboxer.SandboxExists):
        sandboxer.launch(backend=engine, name=owner.name, networks=[shared])
    later = sandboxes(backend=engine, networks=[shared])
    assert owner.name.encode() in fetch_text(later, owner.name), later.exec(
        ["cat", "/etc/hosts"]
    ).stdout


# IPv6 link-local: an internal member to the host side of its bridge ------------------
def _bridge(network: Network) -> str:
    if network.backend == "incus":
        from sandboxer.backends.incus._named_networks import engine_name

        return engine_name(network.name, network.internal)
    found = subprocess.run(
        ["docker", "network", "inspect", "-f", "{{json .Options}}", network.name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return str(json.loads(found)["com.docker.network.bridge.name"])


@pytest.mark.parametrize("engine", ["docker", "incus"])
def test_an_internal_member_never_reaches_the_host_over_ipv6_link_local(
    engine: str, networks: MakeNetwork, sandboxes: Callable[..., Sandbox]
) -> None:
    """Here today there is nothing to try (Docker's members have no IPv6, Incus's
    internal bridges no link-local address): it guards that staying so or guarded."""
    internal = networks(engine, internal=True)
    member = sandboxes(backend=engine, networks=[internal])
    bridge = _bridge(internal)
    shown = subprocess.run(
        ["ip", "-6", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True
    ).stdout
    local = [line.split()[3].split("/")[0] for line in shown.splitlines() if "fe80" in line]
    links = member.exec(["ip", "-6", "-o", "addr"]).stdout.decode()
    devices = {line.split()[1] for line in links.splitlines() if "fe80" in line}
    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::", 0))
        listener.listen(8)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        for address in local:
            for device in devices:
                tried = member.exec(["nc", "-w", "2", f"{address}%{device}", str(port)], timeout=30)
                assert tried.exit_code != 0, (address, device, tried)
        with pytest.raises(TimeoutError):
            listener.accept()
    # Recorded for the report: what there was to attack.
    print(f"host {bridge} link-local {local}; member devices {sorted(devices)}")


# The host's /etc/hosts is not the internal network's business ------------------------
def _host_names() -> list[str]:
    """Names in the host's /etc/hosts besides the usual loopback ones."""
    usual = {"localhost", "ip6-localhost", "ip6-loopback", "localhost.localdomain"}
    names = []
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        names += [n for n in fields[1:] if n not in usual and not n.startswith("ip6-")]
    return names


@pytest.mark.parametrize("engine", ["incus", "libvirt"])
def test_an_internal_networks_dns_does_not_serve_the_hosts_etc_hosts(
    engine: str, networks: MakeNetwork, sandboxes: Callable[..., Sandbox]
) -> None:
    """dnsmasq reads the host's /etc/hosts unless told `no-hosts`: every member would
    learn the host's own names and addresses from its gateway."""
    names = _host_names()
    assert names, "the host's /etc/hosts has no name of its own to look for"
    internal = networks(engine, internal=True)
    member = sandboxes(backend=engine, networks=[internal])
    gateway = str(gateway_of(internal.subnet).ip)
    answered = {}
    for name in names:
        out = member.exec(["nslookup", name, gateway], timeout=30).stdout.decode()
        if f"Name:\t{name}" in out or f"Name: {name}" in out:
            answered[name] = out.split("Name:", 1)[1].strip().replace("\n", " ")
    assert answered == {}, answered
