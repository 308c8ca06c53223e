"""pytest plugin: the `sandbox` and `sandbox_factory` fixtures and `--sandbox-backend`.

- `sandbox` (function scope) launches one sandbox per test, configured by
  `@pytest.mark.sandbox(**SandboxSpec fields)`; a failed test's report gets its logs.
- `sandbox_factory` (session scope) launches sandboxes on demand; all are destroyed when
  the session ends.
- `--sandbox-backend=docker,incus` runs each test that uses `sandbox` once per backend.
- `--sandbox-pool=N` keeps N sandboxes of each spec the `sandbox` fixture uses started
  ahead (`sandboxer.Pool`): a test still gets a fresh sandbox, never a reused one.
- Everything is labelled with this session (one per xdist worker); at the end the session's
  leftovers on every engine are reaped, so nothing survives a test run that finished.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator
from typing import Any, Protocol

import pytest

import sandboxer
from sandboxer import _labels
from sandboxer._gc import gc
from sandboxer._log import logger

_PLUGIN_KEY = pytest.StashKey["_PluginSession"]()
_SANDBOX_KEY = pytest.StashKey["sandboxer.Sandbox"]()


class SandboxFactory(Protocol):
    def __call__(
        self, spec: sandboxer.SandboxSpec | None = None, /, **fields: Any
    ) -> sandboxer.Sandbox: ...


class _PluginSession:
    """What the plugin knows about this test session (one per process)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.active = False
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sandbox(**fields): SandboxSpec fields for the `sandbox` fixture"
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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = _requested_backends(metafunc.config)
    if not names or "sandbox_backend" not in metafunc.fixturenames:
        return
    if any("backend" in m.kwargs for m in metafunc.definition.iter_markers("sandbox")):
        return  # the test pins its backend
    metafunc.parametrize("sandbox_backend", names, indirect=True, ids=names)


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
    if sandbox_backend is not None:
        fields["backend"] = sandbox_backend
    plugin = request.config.stash[_PLUGIN_KEY]
    plugin.activate()
    lease: contextlib.AbstractContextManager[sandboxer.Sandbox]
    if request.config.getoption("sandbox_pool") > 0 and "name" not in fields:
        lease = plugin.pool(sandboxer.SandboxSpec(**fields)).acquire()
    else:
        lease = sandboxer.launch(**fields)  # a fixed name cannot come from a pool
    with lease as made:
        request.node.stash[_SANDBOX_KEY] = made
        yield made


@pytest.fixture(scope="session")
def sandbox_factory(request: pytest.FixtureRequest) -> Iterator[SandboxFactory]:
    """Launch sandboxes from SandboxSpec fields; every one is destroyed at session end."""
    plugin = request.config.stash[_PLUGIN_KEY]
    made: list[sandboxer.Sandbox] = []

    def factory(spec: sandboxer.SandboxSpec | None = None, /, **fields: Any) -> sandboxer.Sandbox:
        plugin.activate()
        launched = sandboxer.launch(spec, **fields)
        made.append(launched)
        return launched

    yield factory
    failures: list[Exception] = []
    for launched in made:
        try:
            launched.destroy()
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def _logs_of(made: sandboxer.Sandbox) -> str:
    try:
        return made.logs() or "(the sandbox printed nothing)"
    except Exception as exc:
        return f"(could not read the logs: {exc})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    made = item.stash.get(_SANDBOX_KEY, None)
    # The sandbox still exists at setup and call time; teardown destroys it.
    if made is not None and report.failed and report.when in ("setup", "call"):
        report.sections.append((f"sandbox logs: {made.name} ({made.backend})", _logs_of(made)))
    return report
