"""`AsyncSandbox.spawn` and `.pty`: the same processes, awaited; waiting holds no thread."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import pytest

import sandboxer
from sandboxer import aio


def test_spawn_write_read_and_wait() -> None:
    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            script = 'echo ready; read line; echo "got $line"; exit 2'
            async with await sb.spawn(["sh", "-c", script]) as proc:
                assert await proc.read(timeout=10) == ("stdout", b"ready\n")
                assert await proc.read(timeout=0.01) is None
                assert proc.running and proc.exit_code is None and proc.pid
                await proc.write("hi\n")
                chunks = [chunk async for chunk in proc]
                result = await proc.wait(timeout=10)
            assert chunks == [("stdout", b"got hi\n")]
            assert (result.exit_code, proc.exit_code, proc.stdout) == (2, 2, b"ready\ngot hi\n")
            assert await proc.read() == ("", b"")

    asyncio.run(main())


def test_close_stdin_and_kill() -> None:
    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            proc = await sb.spawn(["cat"])
            await proc.write(b"data")
            await proc.close_stdin()
            assert (await proc.wait(timeout=10)).stdout == b"data"
            proc = await sb.spawn(["cat"])
            await proc.kill(signal.SIGTERM)
            assert (await proc.wait(timeout=10)).exit_code == 128 + signal.SIGTERM

    asyncio.run(main())


def test_wait_timeout_raises_and_leaves_it_running() -> None:
    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            proc = await sb.spawn(["cat"])
            with pytest.raises(sandboxer.ExecTimeout) as raised:
                await proc.wait(timeout=0.05)
            assert not raised.value.killed and proc.running
            await proc.close()
            assert not proc.running

    asyncio.run(main())


def test_many_waits_hold_no_thread() -> None:
    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            aio.set_max_threads(2)
            procs = [await sb.spawn(["cat"]) for _ in range(6)]
            waits = [asyncio.ensure_future(proc.wait()) for proc in procs]
            await asyncio.sleep(0.05)
            # With every wait pending, the two pool threads still take engine calls.
            for proc in procs:
                await proc.close_stdin()
            results = await asyncio.wait_for(asyncio.gather(*waits), 10)
            assert [r.exit_code for r in results] == [0] * 6

    try:
        asyncio.run(main())
    finally:
        aio.set_max_threads(64)


def test_pty_read_resize_and_wait() -> None:
    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            async with await sb.pty(size=(10, 20)) as terminal:
                await terminal.resize(11, 21)
                await terminal.write(b"stty size\nexit 6\n")
                assert await terminal.wait(timeout=10) == 6
                shown = b""
                while data := await terminal.read(timeout=10):
                    shown += data
                assert await terminal.read(timeout=0) == b""
            assert b"11 21" in shown and terminal.exit_code == 6

    asyncio.run(main())


def test_bad_arguments_raise_from_the_await() -> None:
    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            with pytest.raises(sandboxer.InvalidSpec, match="size"):
                await sb.pty(size=(0, 0))
            proc = await sb.spawn(["cat"])
            with pytest.raises(sandboxer.InvalidSpec, match="timeout"):
                await proc.read(timeout=-1)
            await proc.close()

    asyncio.run(main())


def test_a_cancelled_spawn_is_closed() -> None:
    started, release = threading.Event(), threading.Event()
    spawned: list[sandboxer.Process] = []

    async def main() -> None:
        async with aio.launch(backend="fake") as sb:
            original = sb.sync.spawn

            def slow_spawn(*args: Any, **kwargs: Any) -> sandboxer.Process:
                started.set()
                release.wait(10)
                spawned.append(original(*args, **kwargs))
                return spawned[-1]

            sb.sync.spawn = slow_spawn  # type: ignore[method-assign]
            task = asyncio.ensure_future(sb.spawn(["cat"]))
            await asyncio.to_thread(started.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()  # the spawn finishes after its awaiter left: nobody owns it
            for _ in range(100):
                if spawned and not spawned[0].running:
                    break
                await asyncio.sleep(0.1)
            assert spawned and not spawned[0].running

    asyncio.run(main())
