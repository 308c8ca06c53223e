"""OCI images on VMs, the Kata/Firecracker pattern: the image's unpacked tree as an ext4
disk (built once per image digest, cached in the image store), booted read-only under
sandboxer's own kernel and initramfs, with the image config applied to every process.

The guest side is in guest-scripts/init.sh (stage 1 mounts the disk under a tmpfs
overlay and switch_roots into it) and `_guest_scripts.OCI` (where root-run steps find
sandboxer's programs inside the image's root).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import attrs

from sandboxer.backend import ExecRequest, ImageNotFound, LaunchPlan, logger, timed
from sandboxer.images import ImageConfig, is_builtin, is_disk_image
from sandboxer.images.accounts import check_not_root, user_to_check
from sandboxer.images.store import LocalImage, default_store
from sandboxer.images.systemd import boots_systemd
from sandboxer.images.tree import identity_in_tree

DISK_NAME = "rootfs.ext4"  # the store's name for this engine's artifact of an image
BLOCK = 4096
# ext4's own metadata (inode tables, bitmaps, directories) beyond the files' blocks, and
# free room so that mke2fs never runs out; the guest never writes to the disk.
HEADROOM_RATIO, HEADROOM_BYTES = 0.10, 32 * 1024 * 1024
INODE_HEADROOM = 1024
MKE2FS_SECONDS = 1800.0


def is_oci_image(image: str) -> bool:
    """Neither a busybox built-in nor a user's disk: a registry reference or a Debian
    built-in (sandboxer/debian, sandboxer/systemd) that the image store provides."""
    return not is_builtin(image) and not is_disk_image(image)


@attrs.frozen
class OciDisk:
    path: Path  # the cached ext4 disk in the image store
    config: ImageConfig
    rootfs: Path  # the image's unpacked tree (its account files, read at launch)


def image_disk(plan: LaunchPlan) -> OciDisk:
    """The image's disk, pulled and converted first if the store lacks either."""
    store = default_store()
    image = store.resolve(plan.image, plan.pull)
    checked = user_to_check(plan)
    if checked is not None:
        # A name is the image's to define: refused here if its /etc/passwd makes it root.
        check_not_root(checked, identity_in_tree(checked, image.rootfs))
    path = store.derived(image, DISK_NAME, lambda target: build_disk(image, target))
    return OciDisk(path, image.config, image.rootfs)


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes in whole blocks, entries) under `root`, never following a symlink."""
    blocks, entries = 0, 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as scan:
            for entry in scan:
                entries += 1
                status = entry.stat(follow_symlinks=False)
                blocks += -(-status.st_size // BLOCK)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return blocks * BLOCK, entries


def disk_size(used: int) -> int:
    """Bytes of an ext4 disk holding `used` bytes of files, a whole number of blocks."""
    size = int(used * (1 + HEADROOM_RATIO)) + HEADROOM_BYTES
    return -(-size // BLOCK) * BLOCK


def mke2fs_argv(tree: Path, target: Path, size: int, inodes: int) -> list[str]:
    # No journal and no metadata checksums: the guest only reads it. root_owner: the root
    # directory as the tree has it (mke2fs -d copies owners, modes, setuid bits, xattrs
    # and hard links as they are).
    return [
        "mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal,^metadata_csum", "-b", str(BLOCK),
        "-N", str(inodes), "-m", "0", "-L", "sandboxer-root", "-E", "root_owner=0:0",
        "-d", str(tree), str(target), f"{size // 1024}k",
    ]  # fmt: skip


def build_disk(image: LocalImage, target: Path) -> None:
    """`target`: an ext4 file system with the image's tree (run as root: owners survive)."""
    used, entries = tree_usage(image.rootfs)
    size = disk_size(used)
    argv = mke2fs_argv(image.rootfs, target, size, entries + INODE_HEADROOM)
    logger.info("converting %s to a VM disk (%d MiB)", image.reference, size >> 20)
    with timed("mke2fs", image=image.reference):
        _run(argv, image.reference)
    if not (image.rootfs / "lost+found").exists():
        # mke2fs -d adds one; the image's file list stays the image's.
        _run(["debugfs", "-w", "-R", "rmdir lost+found", str(target)], image.reference)
    target.chmod(0o600)  # the sandbox that attaches it opens it to QEMU's group


def _run(argv: list[str], reference: str) -> None:
    try:
        subprocess.run(argv, capture_output=True, text=True, check=True, timeout=MKE2FS_SECONDS)
    except FileNotFoundError as exc:
        raise ImageNotFound(
            f"converting an OCI image for VMs needs {argv[0]}; fix: apt-get install e2fsprogs"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise ImageNotFound(f"{argv[0]} failed on {reference}: {exc.stderr.strip()}") from exc


def exec_request(config: ImageConfig, request: ExecRequest) -> ExecRequest:
    """`request` with the image config's defaults (Env beneath the caller's, WorkingDir),
    as Docker applies them to an exec. A request without a user runs as the guest's
    default user, which already is `config.effective_user` of the plan's (sandbox.conf)."""
    return attrs.evolve(
        request,
        env=config.environment(request.env),
        workdir=config.working_directory(request.workdir),
    )


def main_request(config: ImageConfig, plan: LaunchPlan) -> ExecRequest | None:
    """The sandbox's main process under Docker's rules; None: the sandbox idles (or
    systemd, PID 1 there, runs the image's services)."""
    if boots_systemd(plan):
        return None
    argv = config.main_process(plan.command, plan.entrypoint)
    if argv is None:
        return None
    request = ExecRequest(
        argv=argv, env=plan.env, workdir=plan.workdir, user=plan.user, stdin=None, timeout=None
    )
    return exec_request(config, request)
