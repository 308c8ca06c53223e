"""The built-in VM guest: a Debian kernel plus an initramfs, built from packages on first use.

The initramfs is sandboxer's busybox root file system (`build_rootfs_tar`) with the guest
init and exec wrapper, sandboxer's command service (compiled here, static), and qemu-ga
(agent), setpriv (privilege dropping), bwrap (seccomp loader) and env (the caller's
environment, after the drop) copied from the host with the libraries `ldd` lists, and
the few kernel modules the guest needs (virtio console for the agent and the service, 9p
for mounts, virtio_net for networks).
Everything lands in one directory per build key, written atomically, readable by QEMU.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import attrs

from sandboxer.backend import ImageNotFound, logger, timed
from sandboxer.images import IMAGE_VERSION, build_rootfs_tar

from . import _guest_scripts as scripts
from ._cpio import CpioWriter
from ._kernel import pvh_kernel
from ._kmod import load_order

# The kernel comes from this meta package's dependency: Debian's current plain 6.1 kernel,
# which has the 9p modules (the -cloud- flavour has none).
KERNEL_META_PACKAGE = "linux-image-amd64"
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "agent": ("virtio_pci", "virtio_console"),
    "9p": ("9pnet_virtio", "9p"),
    "net": ("virtio_net",),
    # An OCI image's root: its ext4 disk under an overlay (see guest-scripts/init.sh).
    # ext4 asks the crypto API for crc32c at every mount, whatever the file system's features.
    "disk": ("virtio_blk", "crc32c_generic", "ext4", "overlay"),
}
# Host binaries copied into the guest, and the Debian package that provides each.
GUEST_BINARIES: dict[str, str] = {
    "/usr/sbin/qemu-ga": "qemu-guest-agent",
    "/usr/bin/setpriv": "util-linux",
    "/usr/bin/bwrap": "bubblewrap",
    # Applies the caller's environment after the drop; busybox's would run its own applet
    # rather than the command the caller's PATH names.
    "/usr/bin/env": "coreutils",
}
_LDD_PATH = re.compile(r"(/\S+) \(0x[0-9a-f]+\)$")
# sandboxer's command service (see _service), compiled static here at build time.
SERVICE_SOURCE = Path(__file__).parent / "guest-service" / "sbx-service.c"
SERVICE_PATHS = (  # where the built-in guest and an OCI image's /.sandboxer have it
    f"sbin/{scripts.SERVICE_BINARY}",
    f"{scripts.OCI_DIR}/bin/{scripts.SERVICE_BINARY}",
)
_FORMAT = "4"  # bump when the layout built here changes in a way the key cannot see


@attrs.frozen
class GuestImage:
    kernel: Path
    initrd: Path
    release: str


def build_key() -> str:
    """Changes whenever anything that goes into the image changes."""
    digest = hashlib.sha256()
    for part in (
        _FORMAT,
        IMAGE_VERSION,
        scripts.init_script(),
        scripts.init_script(scripts.OCI),
        scripts.EXEC,
        scripts.exec_script(scripts.OCI),
        scripts.KILL,
        scripts.SHUTDOWN,
        json.dumps(MODULE_GROUPS),
        json.dumps(GUEST_BINARIES),
        hashlib.sha256(SERVICE_SOURCE.read_bytes()).hexdigest(),
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True)
    except FileNotFoundError as exc:
        raise ImageNotFound(f"building the VM image needs {argv[0]}, which is missing") from exc
    except subprocess.CalledProcessError as exc:
        raise ImageNotFound(f"{' '.join(argv)} failed: {exc.stderr.strip()}") from exc
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package behind the meta package (or SANDBOXER_VM_KERNEL_PACKAGE)."""
    override = os.environ.get("SANDBOXER_VM_KERNEL_PACKAGE")
    if override:
        return override
    output = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in output.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise ImageNotFound(
        f"apt knows no {KERNEL_META_PACKAGE}; fix: add Debian's main archive to apt's sources "
        "and run apt-get update"
    )


def shared_libraries(binary: str) -> list[str]:
    """The libraries and the loader `ldd` lists for `binary`, as absolute paths."""
    paths = []
    for line in _run(["ldd", binary]).splitlines():
        match = _LDD_PATH.search(line.strip())
        if match:
            paths.append(match.group(1))
    return paths


class ImageStore:
    """Built guests under `root`/images, one directory per build key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"

    def current(self) -> GuestImage | None:
        """The image for this build key if it is already built."""
        directory = self.images / build_key()
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        return GuestImage(directory / "vmlinuz", directory / "initrd.img", manifest["release"])

    def ensure(self) -> GuestImage:
        """The current image, built first if missing (once, even with concurrent callers)."""
        image = self.current()
        if image is not None:
            return image
        self.images.mkdir(parents=True, exist_ok=True)
        for directory in (self.root, self.images):
            directory.chmod(0o755)  # QEMU runs as an unprivileged user and must get in
        with _locked(self.images / ".lock"):
            image = self.current()
            if image is None:
                with timed("vm image build"):
                    image = self._build()
        return image

    def _build(self) -> GuestImage:
        key = build_key()
        logger.info("building the VM guest image %s (first use; about a minute)", key)
        missing = [b for b in GUEST_BINARIES if not os.access(b, os.X_OK)]
        if missing:
            packages = " ".join(GUEST_BINARIES[b] for b in missing)
            raise ImageNotFound(
                f"the VM image needs {', '.join(missing)}; fix: apt-get install {packages}"
            )
        with tempfile.TemporaryDirectory(dir=self.images, prefix=".build-") as scratch:
            work = Path(scratch)
            package = kernel_package()
            logger.info("downloading %s from the Debian archive", package)
            _run(["apt-get", "download", "-q", package], cwd=work)
            deb = next(work.glob(f"{package}_*.deb"))
            logger.info("unpacking %s", deb.name)
            _run(["dpkg-deb", "-x", str(deb), str(work / "pkg")])
            vmlinuz = next((work / "pkg" / "boot").glob("vmlinuz-*"))
            release = vmlinuz.name.removeprefix("vmlinuz-")
            modules = work / "pkg" / "lib" / "modules" / release / "kernel"
            out = work / "out"
            out.mkdir(mode=0o755)
            logger.info("writing the initramfs (busybox, qemu-ga, kernel modules)")
            service = _compile_service(work)
            with open(out / "initrd.img", "wb") as stream:
                _write_initramfs(stream, modules, service)
            # PVH boot of the unpacked kernel skips seconds of emulated decompression.
            kernel = pvh_kernel(vmlinuz.read_bytes())
            if kernel is None:
                shutil.copyfile(vmlinuz, out / "vmlinuz")
            else:
                (out / "vmlinuz").write_bytes(kernel)
            (out / "manifest.json").write_text(
                json.dumps({"release": release, "package": deb.name, "key": key}) + "\n"
            )
            for path in out.iterdir():
                path.chmod(0o644)
            out.rename(self.images / key)
        logger.info("VM guest image %s ready (kernel %s)", key, release)
        self._prune(key)
        image = self.current()
        assert image is not None
        return image

    def _prune(self, keep: str) -> None:
        """Drop older builds: a running guest already has its kernel in memory."""
        for directory in self.images.iterdir():
            if directory.is_dir() and directory.name != keep and not directory.name.startswith("."):
                shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _parents(path: str) -> Iterator[str]:
    parts = path.strip("/").split("/")[:-1]
    for end in range(1, len(parts) + 1):
        yield "/".join(parts[:end])


def _compile_service(work: Path) -> bytes:
    """The guest's command service, a static binary: the guest (or an image) has no libc
    of ours to run a dynamic one from."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageNotFound("building the VM image needs gcc; fix: apt-get install gcc libc6-dev")
    target = work / "sbx-service"
    _run([gcc, "-static", "-O2", "-Wall", "-Werror", "-o", str(target), str(SERVICE_SOURCE)])
    return target.read_bytes()


def _write_initramfs(stream: BinaryIO, modules_dir: Path, service: bytes) -> None:
    """The whole guest root as one uncompressed cpio: nothing to decompress at boot."""
    cpio = CpioWriter(stream)
    with tarfile.open(fileobj=BytesIO(build_rootfs_tar())) as rootfs:
        # The host's setpriv and friends replace busybox applets of the same name.
        cpio.add_tar(rootfs, skip=frozenset(path.strip("/") for path in GUEST_BINARIES))
    cpio.char_device("dev/console", 5, 1)
    cpio.file("init", scripts.init_script().encode(), 0o755)
    cpio.file(scripts.EXEC_PATH, scripts.EXEC.encode(), 0o755)
    cpio.file(scripts.KILL_PATH, scripts.KILL.encode(), 0o755)
    cpio.file(scripts.SHUTDOWN_PATH, scripts.SHUTDOWN.encode(), 0o755)
    cpio.file(SERVICE_PATHS[0], service, 0o755)

    def add_host_file(path: str, mode: int) -> None:
        for parent in _parents(path):
            if not cpio.has(parent):
                cpio.directory(parent)
        if not cpio.has(path):
            cpio.file(path, Path(path).read_bytes(), mode)  # follows symlinks to the library

    tools = []  # what stage 1 copies to /.sandboxer of an OCI image: "DIRECTORY PATH"
    for binary in GUEST_BINARIES:
        add_host_file(binary, 0o755)
        tools.append(f"libexec {binary}")
        for library in shared_libraries(binary):
            add_host_file(library, 0o755)
            tools.append(f"lib {library}")
    _add_oci_tools(cpio, sorted(set(tools)))
    cpio.file(SERVICE_PATHS[1], service, 0o755)

    for parent in (*_parents(scripts.MODULE_DIR), scripts.MODULE_DIR):
        if not cpio.has(parent):
            cpio.directory(parent)
    for group, wanted in MODULE_GROUPS.items():
        ordered = load_order(modules_dir, wanted)
        for module in ordered:
            name = f"{scripts.MODULE_DIR}/{module.name}"
            if not cpio.has(name):
                cpio.file(name, module.read_bytes())
        listing = "".join(module.name.removesuffix(".ko") + "\n" for module in ordered)
        cpio.file(f"{scripts.MODULE_DIR}/{group}.list", listing.encode())
    cpio.close()


def _add_oci_tools(cpio: CpioWriter, tools: list[str]) -> None:
    """The OCI guest's /.sandboxer but for the files already in the initramfs, which
    tools.list names for stage 1 to copy (the host's programs, their libraries and loader,
    the static busybox): a link per busybox applet, the OCI layout's init and scripts."""
    layout = scripts.OCI
    cpio.directory(scripts.OCI_DIR)
    for directory in ("bin", "lib", "libexec"):
        cpio.directory(f"{scripts.OCI_DIR}/{directory}")
    # The busybox of the root file system (/bin/busybox) goes with the other tools.
    tools = [*tools, "bin /bin/busybox"]
    for applet in _run([shutil.which("busybox") or "/bin/busybox", "--list"]).split():
        if applet != "busybox":
            cpio.symlink(f"{scripts.OCI_DIR}/bin/{applet}", "busybox")
    for path, text in (
        ("init", scripts.init_script(layout)),
        (layout.exec_path, scripts.exec_script(layout)),
        (layout.kill_path, scripts.KILL),
        (layout.shutdown_path, scripts.SHUTDOWN),
    ):
        name = path.removeprefix(scripts.OCI_ROOT + "/")
        cpio.file(f"{scripts.OCI_DIR}/{name}", text.encode(), 0o755)
    cpio.file(f"{scripts.OCI_DIR}/tools.list", "".join(f"{t}\n" for t in tools).encode())
