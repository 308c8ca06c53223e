"""Contract: a tmpfs mount of the spec is writable by the sandbox's user, bounded by its
size from inside, keeps to its mode, and gone with its sandbox.

One test: each launch of a VM costs seconds.
"""

from __future__ import annotations

from sandboxer import Mount

from . import contract


class TmpfsContract:
    """Mixed into `SandboxContract`: it launches its own sandboxes."""

    def test_tmpfs_mount_is_writable_bounded_and_gone_with_its_sandbox(
        self, make: contract.Make
    ) -> None:
        scratch = Mount(target="/scratch", tmpfs=True, size="1m")
        private = Mount(target="/private", tmpfs=True, mode=0o700)  # root's alone
        sb = make(mounts=[scratch, private])
        # As the sandbox's own user (uid 1000 under hardened), on a read-only root.
        wrote = sb.exec(["sh", "-c", "echo kept > /scratch/data.txt"])
        assert wrote.exit_code == 0, wrote
        assert sb.read_file("/scratch/data.txt") == b"kept\n"
        # The size is a bound the sandbox feels: 2 MiB into 1 MiB fails with ENOSPC.
        flood = sb.exec(["dd", "if=/dev/zero", "of=/scratch/flood", "bs=65536", "count=32"])
        assert flood.exit_code != 0, flood
        assert b"No space left on device" in flood.stderr, flood
        # The mode is the engine's too: a root-owned 0700 tmpfs shuts the user out.
        shut = sb.exec(["sh", "-c", "echo in > /private/data.txt"])
        assert shut.exit_code != 0, shut
        sb.destroy()
        # The same spec again: a fresh, empty tmpfs.
        again = make(mounts=[scratch])
        gone = again.exec(["cat", "/scratch/data.txt"])
        assert gone.exit_code != 0, gone
