"""sandboxer.aio on the in-memory fake backend (each test runs its own event loop)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxer
from sandboxer import aio
from sandboxer._backend import ExecGenerator, ExecRequest, Handle, LaunchPlan
from sandboxer.testing import FakeBackend


class SlowBackend(FakeBackend):
    """Each create and exec blocks its thread for `delay` seconds, like a real engine call."""

    delay = 0.3
    threads: set[str] = set()

    def create(self, plan: LaunchPlan) -> Handle:
        time.sleep(self.delay)
        return super().create(plan)

    def exec(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return (yield from super().exec(handle, request))


@pytest.fixture
def slow() -> Iterator[type[SlowBackend]]:
    SlowBackend.threads = set()
    sandboxer.register_backend("slow", SlowBackend, replace=True)
    yield SlowBackend
    sandboxer.unregister_backend("slow")


def test_launch_exec_and_destroy() -> None:
    async def main() -> None:
        async with aio.launch(backend="fake", env={"A": "1"}) as sb:
            assert await sb.state() is sandboxer.SandboxState.RUNNING
            result = await sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
            assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
            assert b"A=1" in (await sb.exec(["env"])).stdout
            assert sb.name in FakeBackend.sandboxes and sb.backend == "fake"
        assert await sb.state() is sandboxer.SandboxState.DESTROYED
        assert sb.name not in FakeBackend.sandboxes

    asyncio.run(main())


def test_await_launch_then_destroy_twice() -> None:
    async def main() -> None:
        sb = await aio.launch(sandboxer.SandboxSpec(backend="fake"))
        assert (await sb.exec("echo hi")).stdout == b"hi\n"
        await sb.destroy()
        await sb.destroy()  # idempotent
        with pytest.raises(sandboxer.SandboxNotFound):
            await sb.exec(["true"])

    asyncio.run(main())


def test_exec_stream_yields_chunks_then_status() -> None:
    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            stream = sb.exec_stream(["sh", "-c", "echo a; echo b >&2; exit 2"])
            chunks = [item async for item in stream]
            assert chunks == [("stdout", b"a\n"), ("stderr", b"b\n")]
            assert stream.exit_code == 2 and not stream.timed_out
            assert stream.duration is not None
            with pytest.raises(RuntimeError, match="only once"):
                async for _ in stream:
                    pass

    asyncio.run(main())


def test_leaving_a_stream_early_closes_it() -> None:
    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            stream = sb.exec_stream(["sh", "-c", "echo a; echo b; echo c"])
            chunks = aiter(stream)
            assert await anext(chunks) == ("stdout", b"a\n")
            await chunks.aclose()  # type: ignore[attr-defined]
            assert stream.exit_code is None  # never ran to its end
            assert (await sb.exec("echo next")).stdout == b"next\n"

    asyncio.run(main())


def test_files_in_and_out(tmp_path: Path) -> None:
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f.txt").write_bytes(b"tree file")

    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            await sb.write_file("/tmp/x", "text")
            assert await sb.read_file("/tmp/x") == b"text"
            await sb.copy_in(source, "/tmp/tree")
            await sb.copy_out("/tmp/tree", tmp_path / "back")
            with pytest.raises(sandboxer.SandboxFileNotFound):
                await sb.read_file("/tmp/missing")

    asyncio.run(main())
    assert (tmp_path / "back" / "sub" / "f.txt").read_bytes() == b"tree file"


def test_an_error_in_the_block_still_destroys() -> None:
    async def main() -> str:
        with pytest.raises(KeyError):
            async with aio.launch(backend="fake") as sb:
                raise KeyError("boom")
        return sb.name

    assert asyncio.run(main()) not in FakeBackend.sandboxes


def test_a_bad_spec_fails_before_anything_is_awaited() -> None:
    with pytest.raises(sandboxer.InvalidSpec):
        aio.launch(backend="fake", env={"bad key": "x"})


def test_engine_calls_run_concurrently_off_the_loop(slow: type[SlowBackend]) -> None:
    async def main() -> None:
        loop_thread = threading.current_thread().name
        sandboxes = await asyncio.gather(*(aio.launch(backend="slow") for _ in range(5)))
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(sandboxes[i % 5].exec(["echo", str(i)]) for i in range(50))
            )
            elapsed = time.monotonic() - started
        finally:
            await asyncio.gather(*(sb.destroy() for sb in sandboxes))
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(50)]
        # 50 calls of 0.3 s each, one after the other, would take 15 s.
        assert elapsed < 5
        assert loop_thread not in slow.threads

    asyncio.run(main())


def test_a_cancelled_launch_leaves_nothing(slow: type[SlowBackend]) -> None:
    before = set(FakeBackend.sandboxes)

    async def main() -> None:
        task = asyncio.ensure_future(aio.launch(backend="slow"))
        await asyncio.sleep(0.1)  # the create is under way in its thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(slow.delay + 0.5)

    asyncio.run(main())
    assert set(FakeBackend.sandboxes) == before


def test_max_threads_can_be_changed() -> None:
    previous = aio.max_threads()
    try:
        aio.set_max_threads(2)
        assert aio.max_threads() == 2

        async def main() -> bytes:
            async with aio.launch(backend="fake") as sb:
                return (await sb.exec("echo ok")).stdout

        assert asyncio.run(main()) == b"ok\n"
        with pytest.raises(ValueError):
            aio.set_max_threads(0)
    finally:
        aio.set_max_threads(previous)
