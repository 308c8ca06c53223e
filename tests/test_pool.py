"""sandboxer.Pool on the in-memory fake backend."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import _pool
from sandboxer._backend import Handle, LaunchPlan
from sandboxer._errors import EngineError
from sandboxer._pool import Pool, PoolClosed, PoolTimeout
from sandboxer.testing import FakeBackend


def _live() -> set[str]:
    return set(FakeBackend.sandboxes)


class FlakyBackend(FakeBackend):
    """Fails its first `failures` creates, and takes `delay` seconds for each."""

    failures = 0
    delay = 0.0
    calls = 0

    def create(self, plan: LaunchPlan) -> Handle:
        type(self).calls += 1
        time.sleep(self.delay)
        if type(self).calls <= self.failures:
            raise EngineError("engine hiccup")
        return super().create(plan)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FlakyBackend]]:
    monkeypatch.setattr(_pool, "_FIRST_BACKOFF", 0.01)
    FlakyBackend.failures, FlakyBackend.delay, FlakyBackend.calls = 0, 0.0, 0
    sandboxer.register_backend("flaky", FlakyBackend, replace=True)
    yield FlakyBackend
    sandboxer.unregister_backend("flaky")


def test_acquire_hands_out_a_started_sandbox_and_destroys_it_after() -> None:
    before = _live()
    with Pool(backend="fake", size=2) as pool:
        assert pool.wait_ready(5)
        ready = _live() - before
        assert len(ready) == 2
        with pool.acquire() as sb:
            assert sb.name in ready  # started before acquire was called
            running = sb.state
            assert running is sandboxer.SandboxState.RUNNING
            assert sb.exec(["echo", "hi"]).stdout == b"hi\n"
        assert pool.wait_ready(5)
        assert sb.state is sandboxer.SandboxState.DESTROYED  # never reused
        assert len(_live() - before) == 2  # refilled
    assert _live() == before


def test_every_acquire_is_a_different_fresh_sandbox() -> None:
    with Pool(backend="fake", size=2) as pool:
        names = []
        for _ in range(5):
            with pool.acquire(timeout=5) as sb:
                assert sb.exec(["cat", "/tmp/mark"]).exit_code != 0  # nothing left by others
                sb.write_file("/tmp/mark", b"used")
                names.append(sb.name)
        assert len(set(names)) == 5


def test_concurrent_acquires_from_many_threads() -> None:
    before = _live()
    seen: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            with pool.acquire(timeout=10) as sb, lock:
                seen.append(sb.name)

    with Pool(backend="fake", size=3, workers=2) as pool:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(seen) == 40 and len(set(seen)) == 40
    assert _live() == before


def test_close_destroys_ready_starting_and_handed_out(flaky: type[FlakyBackend]) -> None:
    before = _live()
    flaky.delay = 0.1
    pool = Pool(backend="flaky", size=3, workers=3)
    assert pool.wait_ready(5)
    with pool.acquire() as sb:  # its refill is now starting
        pool.close()
        assert sb.state is sandboxer.SandboxState.DESTROYED
    assert _live() == before
    pool.close()  # idempotent
    with pytest.raises(PoolClosed), pool.acquire():
        pass


def test_refill_failures_are_logged_and_retried(
    flaky: type[FlakyBackend], caplog: pytest.LogCaptureFixture
) -> None:
    flaky.failures = 3
    with (
        caplog.at_level(logging.WARNING, "sandboxer"),
        Pool(backend="flaky", size=1) as pool,
        pool.acquire(timeout=10) as sb,
    ):
        assert sb.exec(["true"]).exit_code == 0
    assert flaky.calls >= 4
    assert sum("pool refill failed" in r.message for r in caplog.records) == 3


def test_acquire_times_out_with_the_last_failure(flaky: type[FlakyBackend]) -> None:
    flaky.failures = 10**6
    with (
        Pool(backend="flaky", size=1) as pool,
        pytest.raises(PoolTimeout, match="engine hiccup"),
        pool.acquire(timeout=0.2),
    ):
        pass


def test_a_failure_no_retry_can_fix_is_raised_at_once() -> None:
    with Pool(backend="fake", image="no/such-image", size=1) as pool:
        started = time.monotonic()
        with pytest.raises(sandboxer.ImageNotFound), pool.acquire(timeout=30):
            pass
        assert time.monotonic() - started < 10


def test_the_pool_pins_the_selected_backend() -> None:
    with Pool(backend="fake", size=1) as pool:
        assert pool.spec.backend == "fake"
        assert "fake" in repr(pool)


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"size": 0}, "size"), ({"workers": 0}, "workers"), ({"name": "fixed"}, "name")],
)
def test_bad_arguments_fail_before_any_launch(fields: dict[str, object], field: str) -> None:
    before = _live()
    with pytest.raises(sandboxer.InvalidSpec) as error:
        Pool(backend="fake", **fields)  # type: ignore[arg-type]
    assert error.value.field == field
    assert _live() == before


def test_a_spec_no_backend_can_run_fails_at_construction() -> None:
    with pytest.raises(sandboxer.BackendUnavailable):
        Pool(backend="no-such-engine", size=1)


def test_an_unclosed_pool_does_not_hold_up_exit() -> None:
    # Refills retrying against a broken engine must not keep Python from exiting.
    script = textwrap.dedent(
        """
        import sandboxer
        from sandboxer._errors import EngineError
        from sandboxer._pool import Pool
        from sandboxer.testing import FakeBackend

        class Broken(FakeBackend):
            def create(self, plan):
                raise EngineError("broken")

        sandboxer.register_backend("broken", Broken)
        pool = Pool(backend="broken", size=2)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=20)
    assert done.returncode == 0, done.stderr.decode()
