"""The pytest plugin, run through pytester over the in-memory fake backend."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import _registry, _selector
from sandboxer._labels import LAUNCH, session_id
from sandboxer._launch import make_plan
from sandboxer.pytest_plugin import _tail
from sandboxer.testing import FakeBackend

pytest_plugins = ["pytester"]

# Each inner session registers the fakes itself, as a user's conftest would.
CONFTEST = """
import sandboxer
from sandboxer.testing import FakeBackend

class OtherFake(FakeBackend):
    name = "otherfake"

sandboxer.register_backend("fake", FakeBackend, replace=True)
sandboxer.register_backend("otherfake", OtherFake, replace=True)
"""

# Fakes that differ in what they can run: systemfake runs an init system; narrowfake
# declares one, but its engine, once probed, cannot (only Backend.check at launch tells);
# downfake could, but its engine is switched off.
SYSTEM_FAKES = """
import attrs

class SystemFake(FakeBackend):
    name = "systemfake"
    capabilities = attrs.evolve(FakeBackend.capabilities, kind="system", init=True)

class NarrowFake(SystemFake):
    name = "narrowfake"

    def probe_capabilities(self):
        return FakeBackend.capabilities

class DownFake(SystemFake):
    name = "downfake"
    available = False

for cls in (SystemFake, NarrowFake, DownFake):
    sandboxer.register_backend(cls.name, cls, replace=True)
"""


@pytest.fixture(autouse=True)
def fake_engines(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the fakes exist, in this process and in the inner sessions run in it."""
    monkeypatch.setattr(_registry, "_entry_points", dict)
    _selector._probe_cache.clear()
    pytester.makeconftest(CONFTEST)
    before = set(sandboxer.backend_names())
    yield
    for name, box in list(FakeBackend.sandboxes.items()):
        FakeBackend().remove(name, box.plan.labels[LAUNCH])
    # Every engine a test registered, here or in a module that uses this fixture.
    for name in {"otherfake", "systemfake", "narrowfake", "downfake"} | (
        set(sandboxer.backend_names()) - before
    ):
        sandboxer.unregister_backend(name)
    sandboxer.register_backend("fake", FakeBackend, replace=True)


def test_sandbox_fixture_follows_the_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(backend="otherfake", env={"A": "1"}, labels={"who": "marker"})
        def test_configured(sandbox):
            assert sandbox.backend == "otherfake"
            assert sandbox.labels["who"] == "marker"
            assert sandbox.exec(["sh", "-c", "env"]).stdout == b"A=1\\n"

        @pytest.mark.sandbox(backend="fake")
        class TestClass:
            @pytest.mark.sandbox(profile="default")
            def test_merged(self, sandbox):
                assert (sandbox.backend, sandbox.spec.profile.name) == ("fake", "default")

        def test_default(sandbox):
            assert sandbox.exec("echo hi").stdout == b"hi\\n"
    """)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=3)
    assert FakeBackend.sandboxes == {}


def test_the_marker_waits_until_the_sandbox_is_ready(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(command=["sh", "-c", "echo up"], wait_for_log="up", wait_for="true")
        def test_ready(sandbox):
            assert "wait_for_log" not in sandbox.spec.labels

        @pytest.mark.sandbox(wait_for_log="never printed", wait_timeout=0.2)
        def test_never_ready(sandbox):
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*NotReady*never printed*not within 0.2s*"])
    assert FakeBackend.sandboxes == {}


def test_bad_marker_fields_fail_the_setup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(network="wide")
        def test_bad(sandbox):
            pass

        @pytest.mark.sandbox("fake")
        def test_positional(sandbox):
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*InvalidSpec: network: must be one of*", "*takes SandboxSpec fields as keywords*"]
    )


def test_failed_test_reports_the_sandbox_logs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_fails_on_purpose(sandbox):
            sandbox.exec(["echo", "trace-of-the-failure"])
            assert False, "failing on purpose"

        def test_passes(sandbox):
            sandbox.exec(["echo", "quiet-success"])
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*- sandbox logs: sbx-* (fake) -*",
            "echo trace-of-the-failure",
        ]
    )
    assert "quiet-success" not in result.stdout.str()


def test_sandbox_backend_option_runs_each_test_per_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        def test_each(sandbox, sandbox_backend):
            assert sandbox.backend == sandbox_backend

        @pytest.mark.parametrize("n", [1, 2])
        def test_combined(sandbox, n):
            pass

        @pytest.mark.sandbox(backend="fake")
        def test_pinned(sandbox):
            assert sandbox.backend == "fake"

        def test_without_sandbox():
            pass
    """)
    result = pytester.runpytest("-v", "--sandbox-backend=fake, otherfake")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines_random(
        [
            "*test_each[[]fake[]] PASSED*",
            "*test_each[[]otherfake[]] PASSED*",
            "*test_combined[[]fake-1[]] PASSED*",
            "*test_combined[[]otherfake-2[]] PASSED*",
            "*test_pinned PASSED*",
            "*test_without_sandbox PASSED*",
        ]
    )


def test_unknown_sandbox_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(sandbox): pass")
    result = pytester.runpytest("--sandbox-backend=fake,nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown backend(s) nosuch; known: fake, otherfake*"])


def test_factory_sandboxes_live_until_the_session_ends(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        from sandboxer.testing import FakeBackend

        @pytest.fixture(scope="session")
        def shared(sandbox_factory):
            return sandbox_factory(backend="fake", name="shared-one")

        def test_first(shared, sandbox_factory):
            sandbox_factory(backend="otherfake", name="extra-one")
            assert shared.exec("echo 1").ok

        def test_second(shared):
            assert {"shared-one", "extra-one"} <= set(FakeBackend.sandboxes)
    """)
    pytester.runpytest().assert_outcomes(passed=2)
    assert FakeBackend.sandboxes == {}


def test_session_leftovers_are_reaped_at_the_end(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import sandboxer
        from sandboxer._attach import detach

        def test_leaks(sandbox):
            # Launched outside the fixtures and forgotten: only the session sweep finds it.
            detach(sandboxer.launch(backend="fake", name="leaked"))
    """)
    pytester.runpytest().assert_outcomes(passed=1)
    assert "leaked" not in FakeBackend.sandboxes


def test_a_reused_session_is_cleaned_before_the_first_sandbox(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a killed earlier run with the same SANDBOXER_SESSION left behind.
    FakeBackend().create(make_plan(sandboxer.SandboxSpec(name="from-killed-run")))
    monkeypatch.setenv("SANDBOXER_SESSION", session_id())
    pytester.makepyfile("""
        from sandboxer.testing import FakeBackend

        def test_clean_start(sandbox):
            assert "from-killed-run" not in FakeBackend.sandboxes
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_sessions_without_sandboxes_leave_engines_alone(pytester: pytest.Pytester) -> None:
    FakeBackend().create(make_plan(sandboxer.SandboxSpec(name="not-touched")))
    pytester.makepyfile("def test_plain(): pass")
    pytester.runpytest().assert_outcomes(passed=1)
    assert "not-touched" in FakeBackend.sandboxes


def test_xdist_workers_get_their_own_sessions(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    # Worker processes do not inherit this process's patches: hide the real engines there too.
    pytester.makeconftest(CONFTEST + "sandboxer._registry._entry_points = dict\n")
    pytester.makepyfile("""
        import json, os, pathlib, pytest

        @pytest.mark.sandbox(backend="fake")
        @pytest.mark.parametrize("n", range(4))
        def test_record(sandbox, n):
            label = sandbox.labels["sandboxer.session"]
            out = pathlib.Path(__file__).parent / f"session-{n}.json"
            out.write_text(json.dumps([os.environ["PYTEST_XDIST_WORKER"], label]))
    """)
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=4)
    records = [json.loads(path.read_text()) for path in pytester.path.glob("session-*.json")]
    assert len(records) == 4
    for worker, label in records:
        assert label.endswith("-" + worker)
    assert len({label for _, label in records}) == 2


NEEDS_INIT = """
    import pytest

    @pytest.mark.sandbox(requirements={"init": True})
    def test_sandbox(sandbox, sandbox_backend):
        assert sandbox.backend == sandbox_backend

    def test_factory(function_sandbox_factory, sandbox_backend):
        assert function_sandbox_factory(requirements={"init": True}).backend == sandbox_backend
"""


@pytest.mark.parametrize("pool", [[], ["--sandbox-pool=1"]], ids=["launch", "pool"])
def test_a_backend_that_cannot_meet_the_spec_skips_with_the_reason(
    pytester: pytest.Pytester, pool: list[str]
) -> None:
    pytester.makeconftest(CONFTEST + SYSTEM_FAKES)
    pytester.makepyfile(NEEDS_INIT)
    result = pytester.runpytest("-v", "-rs", "--sandbox-backend=fake,systemfake,narrowfake", *pool)
    result.assert_outcomes(passed=2, skipped=4)
    result.stdout.fnmatch_lines_random(
        [
            "*test_sandbox[[]systemfake[]] PASSED*",
            "*test_factory[[]systemfake[]] PASSED*",
            # The selector's reason, from the declared capabilities, at the test's location.
            "SKIPPED [[]1[]] test_*.py:3: backend 'fake' cannot run this spec:"
            " cannot run an init system as PID 1 (--sandbox-strict makes this an error)",
            "SKIPPED [[]1[]] test_*.py:7: backend 'fake' cannot run this spec:*",
            # Backend.check's, from the probed engine.
            "SKIPPED [[]1[]] test_*.py:3: backend 'narrowfake': cannot run an init system*",
            "SKIPPED [[]1[]] test_*.py:7: backend 'narrowfake': cannot run an init system*",
        ]
    )
    assert FakeBackend.sandboxes == {}


@pytest.mark.parametrize(
    ("option", "ini"),
    [("--sandbox-strict", ""), ("-q", "[pytest]\nsandbox_strict = true\n")],
    ids=["option", "ini"],
)
def test_strict_keeps_the_error(pytester: pytest.Pytester, option: str, ini: str) -> None:
    pytester.makeconftest(CONFTEST + SYSTEM_FAKES)
    if ini:
        pytester.makeini(ini)
    pytester.makepyfile(NEEDS_INIT)
    result = pytester.runpytest(option, "--sandbox-backend=fake,systemfake")
    # The fixture's refusal errors at setup; the factory's fails the test's call.
    result.assert_outcomes(passed=2, errors=1, failed=1)
    result.stdout.fnmatch_lines(["*UnsupportedFeature: backend 'fake' cannot run this spec*"])


def test_only_the_backend_under_test_refusing_skips(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST + SYSTEM_FAKES)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(backend="fake", requirements={"init": True})
        def test_pinned_by_the_marker(sandbox):
            pass

        def test_named_in_the_call(function_sandbox_factory):
            function_sandbox_factory(backend="fake", requirements={"init": True})

        @pytest.mark.sandbox(requirements={"init": True})
        def test_on_a_stopped_engine(sandbox, sandbox_backend):
            assert sandbox_backend == "systemfake"
    """)
    result = pytester.runpytest("-v", "--sandbox-backend=systemfake,downfake")
    # The test's own choice of backend, and an engine that is down, are errors, not skips.
    result.assert_outcomes(passed=1, failed=2, errors=2)
    result.stdout.fnmatch_lines_random(
        [
            "*test_pinned_by_the_marker ERROR*",
            "*test_named_in_the_call[[]systemfake[]] FAILED*",
            "*test_named_in_the_call[[]downfake[]] FAILED*",
            "*test_on_a_stopped_engine[[]downfake[]] ERROR*",
            "*BackendUnavailable*fake engine switched off*",
        ]
    )


def test_factories_destroy_their_sandboxes_when_their_scope_ends(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_a="""
            import pytest
            from sandboxer.testing import FakeBackend

            @pytest.fixture(scope="module")
            def module_box(module_sandbox_factory):
                return module_sandbox_factory(name="module-box")

            def test_make(
                module_box, function_sandbox_factory, sandbox_factory, session_sandbox_factory
            ):
                assert session_sandbox_factory is sandbox_factory
                function_sandbox_factory(name="function-box")
                sandbox_factory(name="session-box")
                assert {"function-box", "module-box", "session-box"} <= set(FakeBackend.sandboxes)

            def test_same_module(module_box):
                assert "function-box" not in FakeBackend.sandboxes
                assert {"module-box", "session-box"} <= set(FakeBackend.sandboxes)
        """,
        test_b="""
            from sandboxer.testing import FakeBackend

            def test_next_module():
                assert "module-box" not in FakeBackend.sandboxes
                assert "session-box" in FakeBackend.sandboxes
        """,
    )
    pytester.runpytest().assert_outcomes(passed=3)
    assert FakeBackend.sandboxes == {}


def test_function_factory_launches_on_the_backend_under_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_each(function_sandbox_factory, sandbox_backend):
            assert function_sandbox_factory().backend == sandbox_backend
            assert function_sandbox_factory(backend="fake").backend == "fake"
    """)
    result = pytester.runpytest("-v", "--sandbox-backend=fake,otherfake")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines_random(["*test_each[[]fake[]] PASSED*", "*[[]otherfake[]] PASSED*"])


def test_failure_reports_the_logs_of_every_sandbox_the_test_made(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.fixture(scope="session")
        def shared(sandbox_factory):
            made = sandbox_factory(name="session-box")
            made.exec(["echo", "from-session"])
            return made

        def test_fails(sandbox, function_sandbox_factory, module_sandbox_factory, shared):
            sandbox.exec(["echo", "from-sandbox"])
            function_sandbox_factory(name="function-box").exec(["echo", "from-function"])
            module_sandbox_factory(name="module-box").exec(["echo", "from-module"])
            assert False, "failing on purpose"

        def test_passes(sandbox_factory):
            sandbox_factory(name="quiet-box").exec(["echo", "quiet-success"])
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*- sandbox logs: sbx-* (fake) -*",
            "*- sandbox logs: session-box (fake) -*",
            "*- sandbox logs: function-box (fake) -*",
            "*- sandbox logs: module-box (fake) -*",
            "echo from-sandbox",
            "echo from-session",
            "echo from-function",
            "echo from-module",
        ]
    )
    assert "quiet" not in result.stdout.str()


def test_reported_logs_are_bounded_and_escaped(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_fails(sandbox):
            sandbox.exec(["echo", "\\x1b[2J" + "x" * 40000 + "-end-of-log"])
            assert False
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "x" * 30000 + "-end-of-log" in out
    assert "x" * 33000 not in out
    assert "\x1b" not in out
    result.stdout.fnmatch_lines(["[[]* earlier bytes not shown[]]"])


def test_log_tail_keeps_whole_characters_and_escapes_controls() -> None:
    assert _tail("é" * 10, limit=5) == "[15 earlier bytes not shown]\néé"
    assert _tail("a\rb\x1b[0m\tc\x9b\n") == "a\\x0db\\x1b[0m\tc\\x9b\n"
