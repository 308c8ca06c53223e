"""pytest plugin: the `sandbox` fixture, sandbox factories and `--sandbox-backend`.

- `sandbox` (function scope) launches one sandbox per test, configured by
  `@pytest.mark.sandbox(**SandboxSpec fields)`.
- Factories launch sandboxes on demand from SandboxSpec fields (`factory(image=...)`) and
  destroy them when their scope ends: `function_sandbox_factory` after the test,
  `module_sandbox_factory` after the module, `sandbox_factory` (also named
  `session_sandbox_factory`) at the end of the session.
- A failed test's report carries the last LOG_TAIL_BYTES of the logs of every sandbox it
  made, through `sandbox` or any factory.
- `--sandbox-backend=docker,incus` runs each test that uses `sandbox` or
  `function_sandbox_factory` once per backend (a factory call's own `backend=` wins). A
  backend that cannot meet the test's spec (`requirements={"init": True}` on docker) skips
  that run with the selector's reason; `--sandbox-strict` (ini: `sandbox_strict = true`)
  makes it an error instead. An engine that is not running is an error either way.
- `sandbox_environment` (function scope) launches a group of sandboxes on one private
  network of their own: `env = sandbox_environment({"db": {...}, "app": {...}})`, members
  launched in order, each waited for (`wait_for_port=` ...), reaching each other by sandbox
  name (`env["db"].name`); all are destroyed, then the network removed, after the test.
  Under --sandbox-backend it runs on each backend, like `sandbox`.
- `--sandbox-pool=N` keeps N sandboxes of each spec the `sandbox` fixture uses started
  ahead (`sandboxer.Pool`): a test still gets a fresh sandbox, never a reused one.
- Everything is labelled with this session (one per xdist worker); at the end the session's
  leftovers on every engine are reaped, so nothing survives a test run that finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Generator, Iterator, Mapping
from typing import Any, Protocol

import attrs
import pytest

import sandboxer
from sandboxer import _labels
from sandboxer._gc import gc
from sandboxer._log import logger

# How much of each sandbox's logs a failure report shows: the end, where the failure is.
LOG_TAIL_BYTES = 32 * 1024
# Logs are the sandbox's output: control characters (terminal escapes, carriage returns
# that overwrite a line) are shown escaped, never sent to the terminal as they are.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

_PLUGIN_KEY = pytest.StashKey["_PluginSession"]()
_MADE_KEY = pytest.StashKey[list["sandboxer.Sandbox"]]()


class SandboxFactory(Protocol):
    def __call__(
        self, spec: sandboxer.SandboxSpec | None = None, /, **fields: Any
    ) -> sandboxer.Sandbox: ...


class _PluginSession:
    """What the plugin knows about this test session (one per process)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.active = False
        self.current: pytest.Item | None = None  # the test running now, if any
        # Specs hold mappings, so they are compared by value, not hashed.
        self.pools: list[tuple[sandboxer.SandboxSpec, sandboxer.Pool]] = []

    def pool(self, spec: sandboxer.SandboxSpec) -> sandboxer.Pool:
        """The session's warm pool for `spec`, started on first use."""
        for known, pool in self.pools:
            if known == spec:
                return pool
        pool = sandboxer.Pool(spec, size=self.config.getoption("sandbox_pool"))
        self.pools.append((spec, pool))
        return pool

    @property
    def session(self) -> str:
        return _labels.session_id()

    @property
    def strict(self) -> bool:
        return bool(self.config.getoption("sandbox_strict") or self.config.getini("sandbox_strict"))

    def made(self, sandbox: sandboxer.Sandbox) -> None:
        """Count `sandbox` as made by the running test, whose failure report shows its logs."""
        if self.current is not None:
            self.current.stash.setdefault(_MADE_KEY, []).append(sandbox)

    def activate(self) -> None:
        """On first sandbox use: reap what a killed run of this same session left behind."""
        if self.active:
            return
        self.active = True
        # A random session id (the default) cannot have leftovers; a reused one can.
        if os.environ.get("SANDBOXER_SESSION"):
            self._sweep()

    def finish(self) -> None:
        for _, pool in self.pools:
            pool.close()
        if self.active:  # else this process never touched an engine: leave them alone
            self._sweep()

    def _sweep(self) -> None:
        # A failed cleanup is reported, never turned into a failed test.
        try:
            gc(session=self.session)
            # Then the networks no sandbox is on any more whose owner (a killed run) exited.
            sandboxer.gc_networks()
        except sandboxer.SandboxError as exc:
            message = f"sandboxer: cleaning up session {self.session} failed: {exc}"
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(message, red=True)
            logger.warning(message)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sandboxer")
    group.addoption(
        "--sandbox-backend",
        dest="sandbox_backends",
        default=None,
        metavar="NAMES",
        help="run every test that uses the `sandbox` fixture once per backend "
        "(comma-separated, e.g. docker,incus,libvirt)",
    )
    group.addoption(
        "--sandbox-pool",
        dest="sandbox_pool",
        type=int,
        default=0,
        metavar="N",
        help="keep N sandboxes of each spec the `sandbox` fixture uses started ahead; "
        "every test still gets a fresh one (default 0: launch on demand)",
    )
    group.addoption(
        "--sandbox-strict",
        dest="sandbox_strict",
        action="store_true",
        default=False,
        help="under --sandbox-backend, a backend that cannot meet a test's spec is an error, "
        "not a skip (ini: sandbox_strict)",
    )
    parser.addini(
        "sandbox_strict",
        type="bool",
        default=False,
        help="as --sandbox-strict: never skip a test because a backend cannot meet its spec",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sandbox(**fields): SandboxSpec fields for the `sandbox` fixture, and what it waits "
        "for before the test runs (wait_for_port=, wait_for_log=, wait_for=, wait_timeout=)",
    )
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is not None:
        # xdist workers may share SANDBOXER_SESSION: give each its own, so that one
        # worker's cleanup never reaches another's sandboxes.
        _labels.set_session(f"{_labels.session_id()}-{worker}")
    config.stash[_PLUGIN_KEY] = _PluginSession(config)


def _requested_backends(config: pytest.Config) -> list[str]:
    value: str | None = config.getoption("sandbox_backends")
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def pytest_sessionstart(session: pytest.Session) -> None:
    # Checked here, not at option parsing, so conftest files can register backends first.
    unknown = sorted(set(_requested_backends(session.config)) - set(sandboxer.backend_names()))
    if unknown:
        raise pytest.UsageError(
            f"--sandbox-backend: unknown backend(s) {', '.join(unknown)}; "
            f"known: {', '.join(sandboxer.backend_names())}"
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    plugin = session.config.stash.get(_PLUGIN_KEY, None)
    if plugin is not None:
        plugin.finish()


def _marker_fields(node: pytest.Item) -> dict[str, Any]:
    """SandboxSpec fields from every `sandbox` marker; the closest one wins per field."""
    fields: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers("sandbox"))):
        if marker.args:
            pytest.fail(
                "@pytest.mark.sandbox takes SandboxSpec fields as keywords, "
                f"got positional {marker.args!r}",
                pytrace=False,
            )
        fields.update(marker.kwargs)
    return fields


# Marker keywords that are not SandboxSpec fields: what the fixture waits for before the
# test gets the sandbox (each a `Sandbox.wait_for*` call), and how long in all.
_WAITS = ("wait_for_port", "wait_for_log", "wait_for", "wait_timeout")


def _wait_until_ready(sandbox: sandboxer.Sandbox, waits: dict[str, Any]) -> None:
    timeout = waits.get("wait_timeout", 60.0)
    if "wait_for_port" in waits:
        sandbox.wait_for_port(waits["wait_for_port"], timeout=timeout)
    if "wait_for_log" in waits:
        sandbox.wait_for_log(waits["wait_for_log"], timeout=timeout)
    if "wait_for" in waits:
        sandbox.wait_for(waits["wait_for"], timeout=timeout)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = _requested_backends(metafunc.config)
    if not names or "sandbox_backend" not in metafunc.fixturenames:
        return
    if any("backend" in m.kwargs for m in metafunc.definition.iter_markers("sandbox")):
        return  # the test pins its backend
    metafunc.parametrize("sandbox_backend", names, indirect=True, ids=names)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    # Sandboxes launched while a test runs (even by a session fixture it sets up) are its.
    plugin = item.config.stash[_PLUGIN_KEY]
    plugin.current = item
    try:
        return (yield)
    finally:
        plugin.current = None


@contextlib.contextmanager
def _skip_when_unmet(plugin: _PluginSession, backend: str | None) -> Iterator[None]:
    """Turn `backend`'s refusal of the spec into a skip; `backend` is the one
    --sandbox-backend runs this test on (None: the test chose, so a refusal is its error)."""
    try:
        yield
    except sandboxer.UnsupportedFeature as exc:
        if backend is None or plugin.strict:
            raise
        # Reported at the test's own location, not at this line of the plugin.
        raise pytest.skip.Exception(
            f"{exc} (--sandbox-strict makes this an error)", _use_item_location=True
        ) from None


@pytest.fixture
def sandbox_backend(request: pytest.FixtureRequest) -> str | None:
    """The backend this test runs on under --sandbox-backend, else None (the selector picks)."""
    name: str | None = getattr(request, "param", None)
    return name


@pytest.fixture
def sandbox(
    request: pytest.FixtureRequest, sandbox_backend: str | None
) -> Iterator[sandboxer.Sandbox]:
    """A sandbox for this test, configured by `@pytest.mark.sandbox(...)`; destroyed after it."""
    assert isinstance(request.node, pytest.Item)
    fields = _marker_fields(request.node)
    waits = {key: fields.pop(key) for key in _WAITS if key in fields}
    if sandbox_backend is not None:
        fields["backend"] = sandbox_backend
    plugin = request.config.stash[_PLUGIN_KEY]
    plugin.activate()
    with contextlib.ExitStack() as stack:
        with _skip_when_unmet(plugin, sandbox_backend):
            lease: contextlib.AbstractContextManager[sandboxer.Sandbox]
            if request.config.getoption("sandbox_pool") > 0 and "name" not in fields:
                lease = plugin.pool(sandboxer.SandboxSpec(**fields)).acquire()
            else:
                lease = sandboxer.launch(**fields)  # a fixed name cannot come from a pool
            made = stack.enter_context(lease)
        plugin.made(made)
        _wait_until_ready(made, waits)
        yield made


class _Factory:
    """Launches sandboxes for one fixture; `close()` destroys every one it launched.

    `backend` is the one --sandbox-backend runs the test on: calls that name no backend
    get it, and its refusal of their spec skips the test (unless strict).
    """

    def __init__(self, plugin: _PluginSession, backend: str | None = None) -> None:
        self._plugin = plugin
        self._backend = backend
        self._launched: list[sandboxer.Sandbox] = []

    def __call__(
        self, spec: sandboxer.SandboxSpec | None = None, /, **fields: Any
    ) -> sandboxer.Sandbox:
        self._plugin.activate()
        chosen = fields.get("backend", spec.backend if spec is not None else None)
        given = self._backend if chosen is None else None
        if given is not None:
            fields["backend"] = given
        with _skip_when_unmet(self._plugin, given):
            launched = sandboxer.launch(spec, **fields)
        self._launched.append(launched)
        self._plugin.made(launched)
        return launched

    def close(self) -> None:
        """Destroy what this factory launched; every one is tried before a failure is raised."""
        failures: list[Exception] = []
        for launched in self._launched:
            try:
                launched.destroy()
            except Exception as exc:
                failures.append(exc)
        self._launched.clear()
        if failures:
            raise failures[0]


def _factory(plugin: _PluginSession, backend: str | None = None) -> Iterator[SandboxFactory]:
    factory = _Factory(plugin, backend)
    yield factory
    factory.close()


@pytest.fixture
def function_sandbox_factory(
    request: pytest.FixtureRequest, sandbox_backend: str | None
) -> Iterator[SandboxFactory]:
    """Launch sandboxes from SandboxSpec fields; every one is destroyed after the test.

    Under --sandbox-backend the test runs once per backend, and calls that name no backend
    launch on that one."""
    yield from _factory(request.config.stash[_PLUGIN_KEY], sandbox_backend)


@pytest.fixture(scope="module")
def module_sandbox_factory(request: pytest.FixtureRequest) -> Iterator[SandboxFactory]:
    """Launch sandboxes from SandboxSpec fields; every one is destroyed after the module."""
    yield from _factory(request.config.stash[_PLUGIN_KEY])


@pytest.fixture(scope="session")
def sandbox_factory(request: pytest.FixtureRequest) -> Iterator[SandboxFactory]:
    """Launch sandboxes from SandboxSpec fields; every one is destroyed at session end."""
    yield from _factory(request.config.stash[_PLUGIN_KEY])


@pytest.fixture(scope="session")
def session_sandbox_factory(sandbox_factory: SandboxFactory) -> SandboxFactory:
    """`sandbox_factory` under the name that says its scope: the same factory."""
    return sandbox_factory


# A member's key starts its sandbox name (`db` -> `db-1a2b3c`).
_MEMBER_KEY = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9-]{0,55}")
Member = Mapping[str, Any] | sandboxer.SandboxSpec


class SandboxEnvironment(Mapping[str, sandboxer.Sandbox]):
    """Sandboxes on one network of their own, by member key: `env["db"]`.

    Members reach each other by sandbox name (`env["db"].name`, also `env.name_of("db")`
    before it is launched). The network is made with the first member, on that member's
    engine; the others join it there. `close()` destroys the members, last first, then
    removes the network.
    """

    def __init__(
        self, plugin: _PluginSession, backend: str | None, *, internal: bool, parametrised: bool
    ) -> None:
        self._plugin = plugin
        self._backend = backend
        # `backend` is the one --sandbox-backend runs the test on: its refusals skip.
        self._parametrised = parametrised
        self._internal = internal
        self._suffix = secrets.token_hex(3)
        self._members: dict[str, sandboxer.Sandbox] = {}
        self.network: sandboxer.Network | None = None

    def name_of(self, key: str) -> str:
        """The sandbox name member `key` has (or will have): what the others reach it by."""
        return f"{key}-{self._suffix}"

    @property
    def names(self) -> dict[str, str]:
        """Member key -> sandbox name, for the members launched so far."""
        return {key: member.name for key, member in self._members.items()}

    def add(self, key: str, member: Member | None = None, /, **fields: Any) -> sandboxer.Sandbox:
        """Launch member `key` from a SandboxSpec or its fields, plus what the `sandbox`
        marker waits for (`wait_for_port=`, `wait_for_log=`, `wait_for=`, `wait_timeout=`);
        return it once ready. Unless it names a network mode or publishes ports, it is on
        the environment's network only (mode none)."""
        if not isinstance(key, str) or not _MEMBER_KEY.fullmatch(key):
            raise sandboxer.InvalidSpec(
                f"members[{key!r}]",
                "expected a key of letters, digits and '-' (at most 56), starting with a "
                "letter or digit: it starts the member's sandbox name",
            )
        if key in self._members:
            raise sandboxer.InvalidSpec(f"members[{key!r}]", "this environment has it already")
        if isinstance(member, sandboxer.SandboxSpec):
            spec = member
        else:
            fields = {**(member or {}), **fields}
            spec = sandboxer.SandboxSpec()
        waits = {name: fields.pop(name) for name in _WAITS if name in fields}
        spec = attrs.evolve(spec, **fields)
        # No host name of its own: on a shared network a host name may be answered like
        # a name, and the key alone could be a peer's sandbox name.
        defaults: dict[str, Any] = {"name": self.name_of(key), "network": "none"}
        if spec.ports or spec.publish_all:
            del defaults["network"]  # published through the default link
        spec = attrs.evolve(
            spec,
            **{field: value for field, value in defaults.items() if getattr(spec, field) is None},
        )
        chosen = spec.backend or self._backend
        given = self._backend if self._parametrised and spec.backend is None else None
        with _skip_when_unmet(self._plugin, given):
            network = self._network(chosen or sandboxer.select(spec).backend)
            launched = sandboxer.launch(
                spec,
                backend=chosen or network.backend,
                networks=[*spec.networks, network.name],
            )
        self._members[key] = launched
        self._plugin.made(launched)
        _wait_until_ready(launched, waits)
        return launched

    def _network(self, backend: str) -> sandboxer.Network:
        if self.network is None:
            self.network = sandboxer.Network.create(
                f"sbx-env-{self._suffix}", backend=backend, internal=self._internal
            )
        return self.network

    def close(self) -> None:
        """Destroy the members, last first, then the network; every step is tried before
        the first failure is raised."""
        failures: list[Exception] = []
        for member in reversed(list(self._members.values())):
            try:
                member.destroy()
            except Exception as exc:
                failures.append(exc)
        self._members.clear()
        if self.network is not None:
            try:
                self.network.remove()
                self.network = None
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def __getitem__(self, key: str) -> sandboxer.Sandbox:
        return self._members[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)


class EnvironmentFactory(Protocol):
    def __call__(
        self,
        members: Mapping[str, Member] | None = None,
        /,
        *,
        internal: bool = True,
        backend: str | None = None,
    ) -> SandboxEnvironment: ...


@pytest.fixture
def sandbox_environment(
    request: pytest.FixtureRequest, sandbox_backend: str | None
) -> Iterator[EnvironmentFactory]:
    """Make environments: `sandbox_environment({"db": dict(image=..., wait_for_port=5432),
    "app": dict(...)})` launches the members in that order on a new network (`internal`:
    no route out, the default) and returns the `SandboxEnvironment`; `env.add(key, ...)`
    adds more. Everything is destroyed after the test, also when a member failed."""
    plugin = request.config.stash[_PLUGIN_KEY]
    made: list[SandboxEnvironment] = []

    def factory(
        members: Mapping[str, Member] | None = None,
        /,
        *,
        internal: bool = True,
        backend: str | None = None,
    ) -> SandboxEnvironment:
        plugin.activate()
        env = SandboxEnvironment(
            plugin,
            backend or sandbox_backend,
            internal=internal,
            parametrised=backend is None and sandbox_backend is not None,
        )
        made.append(env)
        for key, member in (members or {}).items():
            env.add(key, member)
        return env

    yield factory
    failures: list[Exception] = []
    for env in reversed(made):
        try:
            env.close()
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def _tail(text: str, limit: int = LOG_TAIL_BYTES) -> str:
    """The last `limit` bytes of `text` (UTF-8), saying how much was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) > limit:
        kept = data[-limit:].decode("utf-8", "ignore")  # a character cut in two is dropped
        text = f"[{len(data) - limit} earlier bytes not shown]\n{kept}"
    return _CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _logs_of(made: sandboxer.Sandbox) -> str:
    try:
        return _tail(made.logs()) or "(the sandbox printed nothing)"
    except Exception as exc:
        return f"(could not read the logs: {exc})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Function-scoped sandboxes still exist at setup and call time; teardown destroys them.
    if report.failed and report.when in ("setup", "call"):
        for made in item.stash.get(_MADE_KEY, []):
            report.sections.append((f"sandbox logs: {made.name} ({made.backend})", _logs_of(made)))
    return report
