"""The third-party backend of docs/backends.md, passing the reusable contract suite.

`ExampleBackend` is what an outside package writes: it imports the core only through
`sandboxer.backend`, declares what it can do, and answers the abstract methods. Its
engine is sandboxer's in-memory fake, standing in for an SDK client: each `self._engine`
call is where a real adapter calls its engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import attrs
import pytest

import sandboxer
from sandboxer.backend import (
    CONTROLS,
    ArchiveStream,
    Availability,
    Backend,
    Capabilities,
    ExecGenerator,
    ExecRequest,
    Handle,
    LaunchPlan,
    ProcessChannel,
    ProcessRequest,
    SandboxInfo,
    SandboxState,
    VolumeDriver,
)
from sandboxer.testing import FakeBackend as EngineClient
from sandboxer.testing.contract import SandboxContract


class ExampleBackend(Backend):
    name: ClassVar[str] = "example"
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="app",
        isolation="process",
        init=False,
        custom_kernel=False,
        nested=False,
        networks=frozenset({"none", "isolated", "bridge"}),
        limits=frozenset({"cpu_limit", "memory_limit", "pids_limit"}),
        mounts=True,
        ports=True,
        start_seconds=0.0,
        controls={control: "recorded by the example engine" for control in CONTROLS},
    )

    @classmethod
    def probe(cls) -> Availability:
        if not EngineClient.available:
            return Availability(False, "the example engine is off", "switch it on")
        return Availability(True)

    def __init__(self) -> None:
        self._engine = EngineClient()  # one client per process, shared by every sandbox

    def create(self, plan: LaunchPlan) -> Handle:
        return self._engine.create(plan)

    def exec(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        return (yield from self._engine.exec(handle, request))

    def start_process(self, handle: Handle, request: ProcessRequest) -> ProcessChannel:
        return self._engine.start_process(handle, request)

    # The default put_archive/get_archive run tar in the sandbox; this engine has a file API.
    def put_archive(self, handle: Handle, directory: str, data: bytes, timeout: float) -> None:
        self._engine.put_archive(handle, directory, data, timeout)

    def get_archive(self, handle: Handle, path: str, timeout: float, limit: int) -> ArchiveStream:
        return self._engine.get_archive(handle, path, timeout, limit)

    def stop(self, handle: Handle, timeout: float) -> None:
        self._engine.stop(handle, timeout)

    def start(self, handle: Handle) -> Handle:
        return self._engine.start(handle)

    def remove(self, name: str, launch: str) -> None:
        self._engine.remove(name, launch)

    def state(self, handle: Handle) -> SandboxState:
        return self._engine.state(handle)

    def logs(self, handle: Handle) -> str:
        return self._engine.logs(handle)

    def list_sandboxes(self) -> list[SandboxInfo]:
        return [attrs.evolve(i, backend=self.name) for i in self._engine.list_sandboxes()]

    # Named volumes (optional: without them a launch mounting one is refused).
    def volumes(self) -> VolumeDriver:
        return self._engine.volumes()


class TestExampleBackend(SandboxContract):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> Iterator[str]:
        # An installed package registers through its entry point instead (docs/backends.md).
        sandboxer.register_backend("example", ExampleBackend)
        yield "example"
        sandboxer.unregister_backend("example")
