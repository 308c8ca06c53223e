"""The pytest plugin, run through pytester over the in-memory fake backend."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import _registry, _selector
from sandboxer._labels import LAUNCH, session_id
from sandboxer._launch import make_plan
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


@pytest.fixture(autouse=True)
def fake_engines(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the fakes exist, in this process and in the inner sessions run in it."""
    monkeypatch.setattr(_registry, "_entry_points", dict)
    _selector._probe_cache.clear()
    pytester.makeconftest(CONFTEST)
    yield
    for name, box in list(FakeBackend.sandboxes.items()):
        FakeBackend().remove(name, box.plan.labels[LAUNCH])
    sandboxer.unregister_backend("otherfake")
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
