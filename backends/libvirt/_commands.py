"""exec and start_process through the guest's command service (see _service).

The sandbox's directory says whether its guest runs the service: sandboxer's initramfs
does (its launch keeps the account snapshot there, see _accounts); a user's disk image
does not, and keeps qemu-ga's exec.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from sandboxer.backend import (
    EngineError,
    ExecGenerator,
    ExecRequest,
    InvalidSpec,
    ProcessChannel,
    ProcessRequest,
    TerminalSize,
)

from ._accounts import ACCOUNTS_FILE, Accounts
from ._errors import libvirt_errors
from ._exec import DEFAULT_PATH
from ._frames import Start
from ._guest_scripts import SERVICE_CHANNEL
from ._sdk import libvirt
from ._service import ServicePool, ServiceProcess, Session, feed, output, start


def has_service(run: Path) -> bool:
    return (run / ACCOUNTS_FILE).exists()


def sockets(domain: libvirt.virDomain) -> list[str]:
    """The host ends of the service's ports, from the live XML (libvirt names them)."""
    with libvirt_errors():
        document = domain.XMLDesc(0)
    found = []
    for channel in ET.fromstring(document).iterfind("devices/channel"):
        target, source = channel.find("target"), channel.find("source")
        name = "" if target is None else target.get("name", "")
        path = None if source is None else source.get("path")
        if name.startswith(SERVICE_CHANNEL) and path:
            found.append(path)
    if not found:
        raise EngineError("the VM has no command service channel")
    return sorted(found)


def command(accounts: Accounts, request: ExecRequest, terminal: TerminalSize | None) -> Start:
    """What the guest runs: the user as numbers, HOME from its passwd entry unless the
    caller gives one, the default PATH beneath the caller's."""
    identity = accounts.identity(request.user)
    env = {"PATH": DEFAULT_PATH, "HOME": identity.home or "/", **request.env}
    return Start(
        argv=request.argv,
        env=env,
        workdir=request.workdir or "/",
        uid=identity.uid,
        gid=identity.gid,
        terminal=None if terminal is None else (terminal.rows, terminal.cols),
    )


class CommandService:
    """The backend's way to the service of every sandbox it reaches."""

    def __init__(self) -> None:
        self._pool = ServicePool()

    def _start(
        self, domain: libvirt.virDomain, run: Path, request: ExecRequest,
        terminal: TerminalSize | None,
    ) -> Session:  # fmt: skip
        try:  # checked before anything reaches the guest
            payload = command(Accounts.load(run), request, terminal).payload()
        except ValueError as exc:  # what the caller passed does not fit the channel
            raise InvalidSpec("argv", f"the command cannot be sent to the VM: {exc}") from exc
        with libvirt_errors():
            key = domain.UUIDString()
        session = self._pool.session(key, lambda: sockets(domain), run)
        start(session, payload, request.argv[0])
        return session

    def exec(self, domain: libvirt.virDomain, run: Path, request: ExecRequest) -> ExecGenerator:
        session = self._start(domain, run, request, None)
        feed(session, request.stdin)
        return (yield from output(session, request.timeout))

    def start_process(
        self, domain: libvirt.virDomain, run: Path, request: ProcessRequest
    ) -> ProcessChannel:
        session = self._start(domain, run, request.exec, request.terminal)
        return ServiceProcess(session, request.exec.timeout, request.terminal is not None)
