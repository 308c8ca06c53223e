"""sandboxer/systemd with its own systemd as PID 1, on each engine that boots it so
(Incus: a system container; libvirt: a VM, systemd started by sandboxer's initramfs):
a unit it starts serves through a published port; hardened runs with the caller's
consent for what systemd lifts, and is refused without it; and commands still run under
the profile (non-root, no capabilities, read-only root), also when they ask systemd.

Runs on the real engines named by --backends (Docker refuses the image: see its tests).
"""

from __future__ import annotations

import time

import pytest

import sandboxer
from sandboxer import PortMapping, Requirements, Resources, Sandbox
from sandboxer.testing.contract import http_get

SYSTEMD = "sandboxer/systemd"
ENGINES = ("incus", "libvirt")
WEB_UNIT = b"""[Unit]
Description=sandboxer test web server

[Service]
ExecStart=/usr/bin/python3 -m http.server -b 0.0.0.0 -d /srv 8080
"""
# What systemd as PID 1 needs lifted under the hardened profile, the same on both.
SYSTEMD_CONSENT = ["non_root_user", "capabilities", "seccomp"]
BOOT_SECONDS = 300  # systemd's boot under TCG on a busy host
# Room for systemd's own processes where the limit covers them too (Incus).
PIDS = 64
FORK_BOMB = f"for i in $(seq {2 * PIDS}); do sleep 5 & done; wait"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        requested = str(metafunc.config.getoption("--backends")).split(",")
        engines = [name for name in ENGINES if name in (n.strip() for n in requested)]
        # Under xdist, with the rest of that engine's tests (see conftest.py).
        params = [pytest.param(name, marks=pytest.mark.xdist_group(name)) for name in engines]
        metafunc.parametrize("engine", params)


def _wait_for_systemd(sandbox: Sandbox) -> None:
    deadline = time.monotonic() + BOOT_SECONDS
    while sandbox.exec(["systemctl", "is-system-running"], user="0").stdout.strip() not in (
        b"running",
        b"degraded",  # a read-only root fails systemd-logind, not the units we start
    ):
        assert time.monotonic() < deadline, sandbox.logs()[-2000:]
        time.sleep(0.5)


def _serve_with_systemd(sandbox: Sandbox, read_only_root: bool) -> bytes:
    """A unit started by systemd in the running system: its page, fetched from the host
    through the published port. A writable root gets a unit file; a read-only one a
    transient unit (systemd-run keeps it under /run) serving the writable /tmp."""
    _wait_for_systemd(sandbox)
    root = "/tmp" if read_only_root else "/srv"
    sandbox.exec(["sh", "-c", f"echo served by systemd > {root}/index.html"], user="0").check()
    if read_only_root:
        start = f"systemd-run --unit=web /usr/bin/python3 -m http.server -b 0.0.0.0 -d {root} 8080"
    else:
        sandbox.write_file("/etc/systemd/system/web.service", WEB_UNIT)
        start = "systemctl daemon-reload && systemctl start web"
    started = sandbox.exec(["sh", "-c", f"{start} && systemctl is-active web"], user="0")
    assert started.exit_code == 0, started
    # Commands see the system they run in: its PID 1 is systemd.
    assert sandbox.exec(["cat", "/proc/1/comm"]).stdout == b"systemd\n"
    host, port = sandbox.ports[8080]
    return http_get(f"http://{host}:{port}/index.html", wait=120)


def _status(sandbox: Sandbox, pid: str, field: str) -> str:
    result = sandbox.exec(["sh", "-c", f"grep '^{field}:' /proc/{pid}/status"])
    assert result.exit_code == 0, result
    return result.stdout.decode().split(":", 1)[1].strip()


def _attack(sandbox: Sandbox) -> None:
    """From a command: no root, no capabilities, no writable root, and systemd (root)
    does not run anything for it."""
    assert sandbox.exec(["id", "-u"]).stdout == b"1000\n"
    for field in ("CapEff", "CapPrm", "CapAmb"):
        assert int(_status(sandbox, "self", field), 16) == 0, field
    # no_new_privs holds for every process: systemd itself has it.
    assert _status(sandbox, "1", "NoNewPrivs") == "1"
    for user in (None, "0"):  # root without capabilities cannot remount it either
        written = sandbox.exec(["sh", "-c", "echo x > /usr/pwned"], user=user)
        assert written.exit_code != 0, written
        remount = sandbox.exec(["mount", "-o", "remount,rw", "/"], user=user)
        assert remount.exit_code != 0, remount
    # systemd runs as root; it must not start a root service for an unprivileged command.
    asked = sandbox.exec(["systemd-run", "--wait", "-p", "User=root", "touch", "/tmp/pwned"])
    assert asked.exit_code != 0, asked
    assert sandbox.exec(["test", "-e", "/tmp/pwned"]).exit_code != 0


@pytest.mark.parametrize("profile", ["default", "hardened"])
def test_a_systemd_service_is_reachable_through_a_published_port(engine: str, profile: str) -> None:
    hardened = profile == "hardened"
    # On libvirt, services systemd starts live outside the commands' cgroup (in the
    # guest's own slices), so the limits do not hold for every process there.
    limits = ["pids_limit", "memory_limit"] if engine == "libvirt" else []
    consent = SYSTEMD_CONSENT + limits if hardened else []
    with sandboxer.launch(
        backend=engine,
        image=SYSTEMD,
        profile=profile,
        requirements=Requirements(init=True),
        ports=[PortMapping(8080)],
        resources=Resources(pids=PIDS if hardened else None),
        allow_unenforced=consent,
    ) as sandbox:
        served = _serve_with_systemd(sandbox, read_only_root=profile == "hardened")
        assert served == b"served by systemd\n"
        for control in consent:
            status = sandbox.enforcement[control]
            assert not status.enforced and "PID 1" in status.mechanism, control
        if hardened:
            _attack(sandbox)
            if engine == "libvirt":  # setpriv drops the bounding set of every command too
                assert int(_status(sandbox, "self", "CapBnd"), 16) == 0
            assert sandbox.enforcement["read_only_root"].enforced
            assert sandbox.enforcement["no_new_privileges"].enforced
            # Last (its orphans hold the limit a while). systemd owns the cgroup tree, and
            # has set it up for its units by now: the commands' limit still holds.
            bomb = sandbox.exec(["sh", "-c", FORK_BOMB], timeout=120)
            assert b"fork" in bomb.stderr.lower() or b"resource" in bomb.stderr.lower(), bomb


def test_systemd_under_hardened_needs_consent_for_what_it_lifts(engine: str) -> None:
    with pytest.raises(sandboxer.UnsupportedFeature, match="systemd as PID 1") as refused:
        sandboxer.launch(
            backend=engine,
            image=SYSTEMD,
            requirements=Requirements(init=True),
            allow_unenforced=["non_root_user"],
        )
    assert "capabilities" in str(refused.value) and "seccomp" in str(refused.value)
