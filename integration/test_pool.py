"""sandboxer.Pool on real engines: warm sandboxes, never reused, nothing left after close."""

from __future__ import annotations

import os

from sandboxer import Pool
from sandboxer._labels import OWNER_PID
from sandboxer._registry import get_backend


def _names(backend: str) -> set[str]:
    """This process's sandboxes on `backend` (other test runs may share the engine)."""
    return {
        info.name
        for info in get_backend(backend).list_sandboxes()
        if info.labels.get(OWNER_PID) == str(os.getpid())
    }


def test_pool_hands_out_fresh_sandboxes_and_close_leaves_nothing(backend: str) -> None:
    before = _names(backend)
    pool = Pool(backend=backend, size=2)
    try:
        assert pool.wait_ready(300), "the pool did not fill"
        warm = _names(backend) - before
        assert len(warm) == 2
        names = []
        for _ in range(2):
            with pool.acquire(timeout=300) as sb:
                assert sb.backend == backend
                probe = sb.exec(["sh", "-c", "cat /tmp/used-by 2>/dev/null; echo $$"])
                assert probe.exit_code == 0
                assert len(probe.stdout.split()) == 1, "a previous user's file is here"
                sb.write_file("/tmp/used-by", sb.name)
                names.append(sb.name)
        assert names[0] != names[1]
        assert names[0] in warm  # handed out already started
    finally:
        pool.close()
    assert not (_names(backend) - before)
