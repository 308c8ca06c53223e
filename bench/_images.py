"""Image measurements (`run.py --images`): sandboxer/debian, an OCI image from sandboxer's
store, on each engine.

- first use: a launch to exec-ready with the engine's converted copy removed first (Docker's
  image, Incus' image, and a new adapter instance); on libvirt, whose disk lives in the
  store, a launch of the same image from the local registry with an empty store (pull,
  unpack, disk, boot). Raw: the engine's own way to the same image: Docker pulls it
  from the local registry; Incus imports a unified tarball made by hand with tar; libvirt
  has no OCI path, so raw is `mke2fs -d` of the same tree by hand plus a boot of the
  built-in raw path.
- cached launch to exec-ready. Raw: Docker runs the converted image through the SDK;
  Incus launches sandboxer's converted image with `sleep infinity` as PID 1; libvirt
  boots the built-in raw path (an initramfs: there is no raw disk-root boot to compare).
- the cached Debian image's launch against the built-in `sandboxer/minimal` on the same
  engine, both through sandboxer (the "raw" column is sandboxer/minimal there).

The converted copies are found by each adapter's naming (Docker tag, Incus alias);
clearing asserts the copy was there, so a renamed one fails loudly instead of measuring
a cached launch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from _drivers import Driver, SandboxerDriver, raw_driver
from _stats import Result, interleave, result

from sandboxer import get_backend, register_backend
from sandboxer.images.store import LocalImage, default_store

IMAGE = "sandboxer/debian"
BUILTIN = "sandboxer/minimal"
REGISTRY = os.environ.get("SANDBOXER_TEST_REGISTRY", "127.0.0.1:5000")
_METADATA = "architecture: x86_64\ncreation_date: {created}\nproperties:\n  description: bench\n"


@attrs.frozen
class ImageReps:
    first_use: int
    cached: int


IMAGE_FULL = {"docker": ImageReps(3, 10), "incus": ImageReps(3, 10), "libvirt": ImageReps(2, 3)}
IMAGE_QUICK = {"docker": ImageReps(1, 3), "incus": ImageReps(1, 3), "libvirt": ImageReps(1, 1)}


def _short(local: LocalImage) -> str:
    return local.digest.removeprefix("sha256:")[:16]


def ready_time(driver: Driver) -> float:
    """Seconds from launch to the first exec done; the sandbox is then destroyed, untimed."""
    started = time.perf_counter()
    box = driver.launch()
    try:
        driver.exec(box, ["true"])
        return time.perf_counter() - started
    finally:
        driver.destroy(box)


# --- clearing sandboxer's converted copy, per engine ------------------------------------------


def _clear_docker(local: LocalImage) -> None:
    import docker

    client = docker.from_env()
    try:
        client.images.remove(f"{IMAGE}:{_short(local)}", force=True)
    finally:
        client.close()


def _clear_incus(local: LocalImage) -> None:
    import pylxd

    client = pylxd.Client(endpoint="/var/lib/incus/unix.socket")
    alias = f"sandboxer/oci/{_short(local)}"
    found = [i for i in client.images.all() if any(a["name"] == alias for a in i.aliases)]
    assert found, f"no Incus image aliased {alias}: has the adapter's naming changed?"
    for image in found:
        image.delete(wait=True)


def _forget(backend: str) -> None:
    """A new adapter instance: one remembers which images it made ready (as a new process
    would not)."""
    old = get_backend(backend)
    register_backend(backend, type(old), replace=True)
    old.close()


def _cleared(
    backend: str, clear: Callable[[LocalImage], None]
) -> Callable[[LocalImage], Callable[[], float]]:
    def first_use(local: LocalImage) -> Callable[[], float]:
        driver = SandboxerDriver(backend, image=IMAGE)

        def run() -> float:
            clear(local)
            _forget(backend)
            return ready_time(driver)

        return run

    return first_use


def _libvirt_fresh_store(local: LocalImage) -> Callable[[], float]:
    """The store keeps its disk while its index names it: each round launches the same image
    from the local registry with an empty store instead (pull, unpack, disk, boot)."""
    driver = SandboxerDriver("libvirt", image=_pushed(local))
    parent = default_store().root.parent

    def run() -> float:
        root = Path(tempfile.mkdtemp(prefix="bench-store-", dir=parent))
        root.chmod(0o711)  # QEMU reaches the disk through it
        previous = os.environ.get("SANDBOXER_IMAGE_DIR")
        os.environ["SANDBOXER_IMAGE_DIR"] = str(root)
        try:
            return ready_time(driver)
        finally:
            if previous is None:
                del os.environ["SANDBOXER_IMAGE_DIR"]
            else:
                os.environ["SANDBOXER_IMAGE_DIR"] = previous
            shutil.rmtree(root)

    return run


SANDBOXER_FIRST_USE: dict[str, Callable[[LocalImage], Callable[[], float]]] = {
    "docker": _cleared("docker", _clear_docker),
    "incus": _cleared("incus", _clear_incus),
    "libvirt": _libvirt_fresh_store,
}


# --- the raw engines' own first use -------------------------------------------------------------


def _pushed(local: LocalImage) -> str:
    """The image in the local registry (pushed once, untimed): its reference."""
    reference = f"{REGISTRY}/sandboxer-bench/debian:{_short(local)}"
    source = f"oci:{local.layout}:{local.layout_tag}"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", source, f"docker://{reference}"],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return reference


def _docker_first_use(local: LocalImage) -> Callable[[], float]:
    """Each round removes Docker's copy and times a pull from the local registry and a raw
    launch to exec-ready."""
    import docker

    reference = _pushed(local)
    client = docker.from_env()
    raw = raw_driver("docker", image=reference)

    def run() -> float:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(reference, force=True)
        started = time.perf_counter()
        client.images.pull(reference)
        ready_time(raw)
        return time.perf_counter() - started

    return run


def _incus_first_use(local: LocalImage) -> Callable[[], float]:
    """Each round: a unified tarball of the store's tree by tar, imported with pylxd, then
    a raw launch to exec-ready; the image is deleted afterwards (untimed)."""
    import pylxd

    client = pylxd.Client(endpoint="/var/lib/incus/unix.socket")
    alias = f"sandboxer-rawbench/{_short(local)}"

    def run() -> float:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="sandboxer-bench-") as scratch:
            metadata = Path(scratch) / "metadata.yaml"
            metadata.write_text(_METADATA.format(created=int(time.time())))
            tarball = subprocess.run(
                [
                    *("tar", "-c", "--numeric-owner", "--xattrs"),
                    *("-C", scratch, "metadata.yaml"),
                    *("-C", str(local.rootfs.parent), local.rootfs.name),
                ],
                check=True,
                capture_output=True,
                timeout=900,
            ).stdout
        image = client.images.create(tarball, public=False, wait=True)
        image.add_alias(alias, "sandboxer bench: raw import")
        raw = raw_driver("incus", alias=alias, init="/bin/sleep infinity")
        try:
            ready_time(raw)
            return time.perf_counter() - started
        finally:
            raw.close()
            image.delete(wait=True)

    return run


def _libvirt_first_use(local: LocalImage) -> Callable[[], float]:
    """Each round: `mke2fs -d` of the store's tree by hand, then a boot of the built-in raw
    path (libvirt has no raw way to boot an OCI tree)."""
    raw = raw_driver("libvirt")

    def run() -> float:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="sandboxer-bench-") as scratch:
            disk = Path(scratch) / "rootfs.ext4"
            with disk.open("wb") as image:
                image.truncate(local.size * 3 // 2 + 256 * 1024 * 1024)
            subprocess.run(
                ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(local.rootfs), str(disk)],
                check=True,
                capture_output=True,
                timeout=900,
            )
        ready_time(raw)
        return time.perf_counter() - started

    return run


RAW_FIRST_USE: dict[str, Callable[[LocalImage], Callable[[], float]]] = {
    "docker": _docker_first_use,
    "incus": _incus_first_use,
    "libvirt": _libvirt_first_use,
}


def _raw_cached(backend: str, local: LocalImage) -> Driver:
    if backend == "docker":
        return raw_driver("docker", image=f"{IMAGE}:{_short(local)}")
    if backend == "incus":
        return raw_driver(
            "incus", alias=f"sandboxer/oci/{_short(local)}", init="/bin/sleep infinity"
        )
    return raw_driver("libvirt")


RAW_NOTES = {
    "docker": "raw: docker pull from the local registry + run",
    "incus": "raw: tar + pylxd import + launch",
    "libvirt": "raw: mke2fs -d by hand + boot of the built-in initramfs",
}
CACHED_NOTES = {
    "docker": "raw: the SDK runs the converted image",
    "incus": "raw: pylxd launches the converted image, sleep as PID 1",
    "libvirt": "raw: the built-in initramfs boot; sandboxer boots the image's ext4 disk",
}


def image_results(backend: str, reps: ImageReps) -> list[Result]:
    local = default_store().resolve(IMAGE, "missing")
    sandboxer_side = SandboxerDriver(backend, image=IMAGE)
    ready_time(sandboxer_side)  # converted and warm before the first clearing

    first = interleave(
        reps.first_use,
        {
            "sandboxer": SANDBOXER_FIRST_USE[backend](local),
            "raw": RAW_FIRST_USE[backend](local),
        },
    )
    raw: Any = _raw_cached(backend, local)
    try:
        ready_time(raw)  # warm
        cached = interleave(
            reps.cached,
            {"sandboxer": lambda: ready_time(sandboxer_side), "raw": lambda: ready_time(raw)},
        )
    finally:
        raw.close()
    builtin = SandboxerDriver(backend, image=BUILTIN)
    ready_time(builtin)
    against_builtin = interleave(
        reps.cached,
        {"sandboxer": lambda: ready_time(sandboxer_side), "raw": lambda: ready_time(builtin)},
    )
    unit = "s" if backend == "libvirt" else "ms"
    return [
        result(
            backend, f"{IMAGE} first use to exec-ready", first, unit="s", note=RAW_NOTES[backend]
        ),
        result(
            backend,
            f"{IMAGE} cached, launch to exec-ready",
            cached,
            unit=unit,
            note=CACHED_NOTES[backend],
        ),
        result(
            backend,
            f"{IMAGE} cached against {BUILTIN}, launch to exec-ready",
            against_builtin,
            unit=unit,
            note=f"raw column: {BUILTIN} through sandboxer; ratio = debian / built-in",
        ),
    ]
