"""The `sandbox_environment` fixture, run through pytester over the fake engines: members
on one network of their own, ready in order, torn down together whatever happened."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kits.owners import dead_owner
from test_pytest_plugin import fake_engines  # noqa: F401  (autouse: only the fakes)

import sandboxer
from sandboxer._labels import OWNER, session_id
from sandboxer._launch import make_plan
from sandboxer.testing import FakeBackend

pytest_plugins = ["pytester"]

# An engine without named networks, for --sandbox-backend runs.
NO_NETWORKS = """
import sandboxer
from sandboxer.backend import Backend
from sandboxer.testing import FakeBackend

class NoNetworkFake(FakeBackend):
    name = "nonetfake"
    networks = Backend.networks

sandboxer.register_backend("nonetfake", NoNetworkFake, replace=True)
"""


@pytest.fixture(autouse=True)
def nothing_left() -> Iterator[None]:
    """Whatever the inner tests did, they leave no sandbox and no network behind."""
    yield
    assert FakeBackend.sandboxes == {}
    assert FakeBackend.network_store == {}


def test_members_share_a_network_of_their_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import sandboxer

        def test_env(sandbox_environment):
            env = sandbox_environment({
                "db": dict(command=["sh", "-c", "echo db up"], wait_for_log="db up"),
                "app": dict(wait_for="true"),
            })
            assert list(env) == ["db", "app"] and len(env) == 2
            db, app = env["db"], env["app"]
            assert db.name == env.name_of("db") and db.name.startswith("db-")
            assert db.name.split("-")[1] == app.name.split("-")[1]
            assert env.names == {"db": db.name, "app": app.name}
            net = env.network
            assert net.ours and net.internal and net.backend == "fake"
            assert sorted(net.users()) == sorted([db.name, app.name])
            # Reached through the environment's network only, by its sandbox name.
            assert (db.spec.hostname, db.spec.network) == (None, "none")
            assert db.spec.networks == (net.name,)

        def test_builder(sandbox_environment):
            env = sandbox_environment(internal=False)
            web = env.add("web", network="bridge", labels={"role": "web"})
            assert env.network is not None and not env.network.internal
            assert (web.spec.network, web.labels["role"]) == ("bridge", "web")
            own = env.add("api", sandboxer.SandboxSpec(name="my-api"), wait_for="true")
            assert (own.name, own.spec.hostname, env.names["api"]) == ("my-api", None, "my-api")
            other = sandbox_environment({"web": {}})
            assert other.network.name != env.network.name and other["web"].name != web.name
    """)
    pytester.runpytest().assert_outcomes(passed=2)


def test_a_member_failing_tears_down_the_rest_and_reports_their_logs(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("""
        def test_bad_member(sandbox_environment):
            sandbox_environment({
                "db": dict(command=["sh", "-c", "echo db-was-here"]),
                "app": dict(network="wide"),
            })

        def test_never_ready(sandbox_environment):
            sandbox_environment({
                "db": {},
                "app": dict(wait_for_log="never printed", wait_timeout=0.2),
            })
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*InvalidSpec: network: must be one of*",
            "*- sandbox logs: db-* (fake) -*",
            "*echo db-was-here",
            "*NotReady*never printed*",
            "*- sandbox logs: app-* (fake) -*",
        ]
    )


def test_bad_keys_are_refused_naming_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        import sandboxer

        @pytest.mark.parametrize("key", ["", "a b", "-x", "x" * 57, 3])
        def test_key(sandbox_environment, key):
            with pytest.raises(sandboxer.InvalidSpec, match=r"^members\\["):
                sandbox_environment({key: {}})

        def test_twice(sandbox_environment):
            env = sandbox_environment({"db": {}})
            with pytest.raises(sandboxer.InvalidSpec, match="has it already"):
                env.add("db")
    """)
    pytester.runpytest().assert_outcomes(passed=6)


def test_each_backend_gets_its_environment_and_one_without_networks_skips(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(NO_NETWORKS)
    pytester.makepyfile("""
        import sandboxer

        def test_env(sandbox_environment, sandbox_backend):
            env = sandbox_environment({"a": {}, "b": {}})
            assert env.network.backend == sandbox_backend
            assert {m.backend for m in env.values()} == {sandbox_backend}

        def test_pinned(sandbox_environment):
            env = sandbox_environment({"a": {}}, backend="fake")
            assert env["a"].backend == "fake"
    """)
    try:
        result = pytester.runpytest("-v", "-rs", "--sandbox-backend=fake,nonetfake")
    finally:
        sandboxer.unregister_backend("nonetfake")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["*test_env[[]nonetfake[]]*", "SKIPPED*networks*"])


def test_a_killed_runs_environment_is_cleaned_before_the_first_sandbox(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A member and its network, left by a killed run with the same SANDBOXER_SESSION.
    sandboxer.Network.create("sbx-env-killed", backend="fake", internal=True)
    FakeBackend.network_store["sbx-env-killed"].labels[OWNER] = dead_owner()  # type: ignore[index]
    spec = sandboxer.SandboxSpec(name="db-killed", networks=["sbx-env-killed"])
    FakeBackend().create(make_plan(spec))
    monkeypatch.setenv("SANDBOXER_SESSION", session_id())
    pytester.makepyfile("""
        from sandboxer.testing import FakeBackend

        def test_clean_start(sandbox_environment):
            sandbox_environment({"db": {}})
            assert "db-killed" not in FakeBackend.sandboxes
            assert "sbx-env-killed" not in FakeBackend.network_store
    """)
    pytester.runpytest().assert_outcomes(passed=1)
