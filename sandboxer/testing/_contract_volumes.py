"""Contract: a named volume outlives its sandbox, and is shared under the profile's rules.

One test (three sandboxes: a VM boots three times in it). Listing, foreign volumes and gc
are engine calls only, in integration/test_volumes.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import Mount, Volume

from . import contract


class VolumesContract:
    """Mixed into `SandboxContract`: each sandbox here mounts a volume of its own."""

    @pytest.fixture
    def volume_name(self, backend: str) -> Iterator[str]:
        """A fresh volume name; the volume goes after the test's sandboxes (set up first,
        torn down last)."""
        name = f"sbx-contract-{uuid.uuid4().hex[:10]}"
        yield name
        Volume(name, backend).remove()
        assert name not in [v.name for v in Volume.list(backend)]

    def test_volume_outlives_its_sandbox_and_is_shared(
        self, volume_name: str, make: contract.Make, backend: str
    ) -> None:
        name = volume_name
        # Missing at launch: made then, labelled as ours, like `docker run -v NAME:/p`.
        first = make(mounts=[Mount(volume=name, target="/data")])
        assert first.exec(["id", "-u"]).stdout == b"1000\n"  # the hardened user
        made = first.exec(["mkdir", "/data/d"])
        assert made.exit_code == 0, made
        wrote = first.exec(["sh", "-c", "echo first > /data/d/kept.txt"])
        assert wrote.exit_code == 0, wrote
        first.destroy()
        assert name in [v.name for v in Volume.list(backend)]

        # The next sandboxes (own id maps where the engine gives them) read it, and
        # one writes it while the other, mounted read-only, sees that and cannot write.
        writer = make(mounts=[Mount(volume=name, target="/data")])
        reader = make(mounts=[Mount(volume=name, target="/data", read_only=True)])
        assert writer.exec(["cat", "/data/d/kept.txt"]).stdout == b"first\n"
        # Rewriting the file the first sandbox made: it is this user's, as the guest sees.
        rewrote = writer.exec(["sh", "-c", "echo second > /data/d/kept.txt"])
        assert rewrote.exit_code == 0, rewrote
        assert reader.exec(["cat", "/data/d/kept.txt"]).stdout == b"second\n"
        for attack in ("echo x > /data/new.txt", "echo x > /data/d/kept.txt", "mkdir /data/e"):
            result = reader.exec(["sh", "-c", attack])
            assert result.exit_code != 0, (attack, result)
        assert writer.exec(["cat", "/data/d/kept.txt"]).stdout == b"second\n"

        # In use: refused, naming a sandbox that mounts it.
        with pytest.raises(sandboxer.VolumeInUse, match=rf"{writer.name}|{reader.name}"):
            Volume.get(name, backend).remove()
        writer.destroy()
        reader.destroy()
